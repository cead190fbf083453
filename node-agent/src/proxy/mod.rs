//! The service proxy: every Service's virtual address (`status.clusterIP`) and nodePorts,
//! spread over its ready replicas, and a DNS server for service names.
//!
//! - [`cluster`]: list + watch of all Services and Replicas.
//! - [`endpoints`]: the pure computation of each service port's endpoints.
//! - [`ruleset`]: the nftables table for them; [`nft`]: applying it as one transaction.
//! - [`sync`]: the debounced loop from watch events to the kernel.
//! - [`dns`]: the UDP DNS server for `<service>[.<domain>]`.
//!
//! Why nftables DNAT, not a userspace proxy or IPVS: the kernel forwards every byte, so nothing
//! is copied through the agent and an agent restart or crash does not drop a connection (the
//! rules stay in the kernel when the agent stops); conntrack picks an endpoint once per
//! connection (`numgen random`) and keeps it, which is per-connection balancing for free, and
//! the whole table is swapped in one atomic transaction. IPVS would need ipvsadm or a netlink
//! client, a dummy interface holding every virtual address, and still iptables/nftables for
//! masquerading; a userspace proxy copies every byte twice and dies with the agent.
//!
//! Invariants: the table is rebuilt only from a complete view of the cluster; rules never
//! NAT or route anything towards the uplink: only DNATed packets are masqueraded, DNAT targets
//! only endpoints, and packets to a virtual address with no matching port are rejected rather
//! than routed on.
//!
//! Needs of the replica network: each replica's bridge port in hairpin mode (with
//! br_netfilter calling nftables for bridged frames, the kernel default once loaded, a
//! replica's connection DNATed back to itself is re-bridged onto the port it came in on);
//! `net.ipv4.ip_forward=1`; a route covering the service range on the node (local sockets are
//! routed before the output hook rewrites their destination). Known limit: UDP conntrack entries to a removed endpoint are not flushed;
//! such a UDP flow keeps its endpoint until its conntrack entry expires.

pub mod cluster;
pub mod dns;
pub mod endpoints;
pub mod nft;
pub mod ruleset;
pub mod sync;

use cluster::{watch_kind, Cluster};
use dns::DnsTable;
use gantry_api::client::Client;
use gantry_api::net::Ipv4Cidr;
use gantry_api::objects::Kind;
use nft::{Nft, NftError};
use ruleset::{RulesetError, RulesetParams};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync::{SyncSettings, SyncStats};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The default nftables table.
pub const DEFAULT_TABLE: &str = "gantry";
/// The default DNS domain of services.
pub const DEFAULT_DOMAIN: &str = "gantry.local";
/// The default packet mark bit asking for masquerade (kube-proxy uses the same bit).
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;

/// What the proxy of one node is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The nftables table (family `ip`) the proxy owns entirely.
    pub table: String,
    /// The bridge replicas of this node hang on.
    pub bridge: String,
    /// This node's replica subnet (the bridge's).
    pub node_subnet: Ipv4Cidr,
    /// The bridge's address in `node_subnet`, the replicas' gateway.
    pub gateway: Ipv4Addr,
    /// The DNS domain of services (`gantry.local`).
    pub domain: String,
    /// Where the DNS server listens (normally `gateway:53`).
    pub dns_listen: SocketAddr,
    /// The mark bit used between the nodePort and postrouting chains.
    pub masquerade_mark: u32,
    /// How nft is run (default: `nft` from `PATH`, in the agent's network namespace).
    pub nft: Nft,
    /// Quiet time collecting a burst of changes into one transaction.
    pub debounce: Duration,
    /// Re-apply the table at least this often.
    pub resync: Duration,
}

impl ProxyConfig {
    /// The configuration for a node whose replicas hang on `bridge` in `node_subnet`, with
    /// `gateway` as their gateway; DNS on `gateway:53`, other fields at their defaults.
    pub fn new(bridge: impl Into<String>, node_subnet: Ipv4Cidr, gateway: Ipv4Addr) -> Self {
        ProxyConfig {
            table: DEFAULT_TABLE.to_string(),
            bridge: bridge.into(),
            node_subnet,
            gateway,
            domain: DEFAULT_DOMAIN.to_string(),
            dns_listen: SocketAddr::from((gateway, 53)),
            masquerade_mark: DEFAULT_MASQUERADE_MARK,
            nft: Nft::new(),
            debounce: Duration::from_millis(30),
            resync: Duration::from_secs(60),
        }
    }

    /// The ruleset parameters.
    pub fn ruleset_params(&self) -> RulesetParams {
        RulesetParams {
            table: self.table.clone(),
            bridge: self.bridge.clone(),
            node_subnet: self.node_subnet,
            masquerade_mark: self.masquerade_mark,
        }
    }

    /// What the sync loop needs of it.
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            params: self.ruleset_params(),
            domain: self.domain.clone(),
            nft: self.nft.clone(),
            debounce: self.debounce,
            resync: self.resync,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), ProxyError> {
        self.ruleset_params().validate()?;
        if !self.node_subnet.contains(self.gateway) {
            return Err(ProxyError::Config(format!(
                "gateway {} is not in the node subnet {}",
                self.gateway, self.node_subnet
            )));
        }
        if self.domain.trim_end_matches('.').is_empty()
            || self.domain.split('.').any(|l| l.len() > 63)
        {
            return Err(ProxyError::Config(format!(
                "domain {:?} is not a dns name",
                self.domain
            )));
        }
        if self.resync.is_zero() {
            return Err(ProxyError::Config("resync period must be non-zero".into()));
        }
        Ok(())
    }
}

/// Why the proxy could not start or clean up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An invalid configuration field.
    #[error("proxy config: {0}")]
    Config(String),
    /// A name that cannot be put into a ruleset.
    #[error("proxy config: {0}")]
    Ruleset(#[from] RulesetError),
    /// nft could not be run or refused a script.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The DNS address could not be bound.
    #[error("cannot listen for dns on {addr}: {source}")]
    DnsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// One node's service proxy.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    stats: Arc<SyncStats>,
}

impl Proxy {
    /// A proxy for `config`, not started.
    pub fn new(config: ProxyConfig) -> Self {
        Proxy {
            config,
            stats: Arc::new(SyncStats::default()),
        }
    }

    /// Its sync figures (last transaction duration, event-to-kernel latency).
    pub fn stats(&self) -> Arc<SyncStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown`: see [`run`].
    ///
    /// # Errors
    /// See [`run`].
    pub async fn run(self, client: Client, shutdown: CancellationToken) -> Result<(), ProxyError> {
        let config = self.config;
        config.validate()?;
        config.nft.check().await?;
        let socket =
            UdpSocket::bind(config.dns_listen)
                .await
                .map_err(|source| ProxyError::DnsBind {
                    addr: config.dns_listen,
                    source,
                })?;
        let cluster = Arc::new(Mutex::new(Cluster::default()));
        let wake = Arc::new(Notify::new());
        let (dns_tx, mut dns_rx) = watch::channel(Arc::new(DnsTable::new(&config.domain, [])));
        let tracker = TaskTracker::new();
        for kind in [Kind::Service, Kind::Replica] {
            tracker.spawn(watch_kind(
                kind,
                client.clone(),
                cluster.clone(),
                wake.clone(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(sync::sync_loop(
            config.sync_settings(),
            cluster,
            wake,
            dns_tx,
            self.stats,
            shutdown.clone(),
        ));
        let dns_shutdown = shutdown.clone();
        tracker.spawn(async move {
            // Until the first complete view, queries wait in the socket rather than being
            // told that existing services do not exist.
            tokio::select! {
                _ = dns_shutdown.cancelled() => return,
                r = dns_rx.changed() => if r.is_err() { return },
            }
            dns::serve(socket, dns_rx, dns_shutdown).await;
        });
        tracker.close();
        tracing::info!(
            table = %config.table,
            bridge = %config.bridge,
            dns = %config.dns_listen,
            "service proxy running"
        );
        shutdown.cancelled().await;
        tracker.wait().await;
        tracing::info!(table = %config.table, "service proxy stopped; rules left in place");
        Ok(())
    }
}

/// Serves every Service's virtual address and nodePorts on this node from the nftables table
/// `config.table`, and service names over DNS on `config.dns_listen`, until `shutdown`. The
/// rules stay in the kernel on return, so traffic keeps flowing across an agent restart; see
/// [`cleanup`] to remove them. Control-plane outages are waited out (the last rules stay).
///
/// # Errors
/// An invalid configuration, nft missing, or the DNS address not bindable — all at start.
pub async fn run(
    config: ProxyConfig,
    client: Client,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    Proxy::new(config).run(client, shutdown).await
}

/// Removes the proxy's table (nothing happens when it does not exist).
///
/// # Errors
/// An invalid table name, or nft failing.
pub async fn cleanup(config: &ProxyConfig) -> Result<(), ProxyError> {
    config.ruleset_params().validate()?;
    tracing::debug!(table = %config.table, "removing service rules");
    config
        .nft
        .apply(&ruleset::delete_script(&config.table))
        .await?;
    Ok(())
}
