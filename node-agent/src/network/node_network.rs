//! The node's side of replica networking: wait for this node's subnet, set up the bridge and
//! forwarding, publish [`NodeNetwork`], and keep routes to every other node's subnet.
//!
//! Level-triggered like the rest of the agent: Node objects are listed, then watched; after
//! every change the wanted state (bridge address, routes) is computed from all Nodes and
//! applied only when it differs from what was last applied, and re-applied on every resync
//! anyway (repairing a route or bridge someone removed). Routes carry protocol
//! [`ROUTE_PROTO`](super::ROUTE_PROTO); routes with it that no Node wants any more (a node
//! deleted while this agent was down) are removed.

use super::ip::{ip, ip_quiet};
use super::{NetworkError, NodeNetwork, DEFAULT_CLUSTER_CIDR, DEFAULT_SERVICE_CIDR, ROUTE_PROTO};
use gantry_api::client::{Client, ClientError};
use gantry_api::model::NodeSpec;
use gantry_api::net::Ipv4Cidr;
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the node-network task is told.
#[derive(Debug, Clone)]
pub struct NodeNetworkConfig {
    /// This node's name.
    pub node: String,
    /// The bridge to create.
    pub bridge: String,
    /// This node's advertised `host:port`; the host part is [`NodeNetwork::node_ip`].
    pub advertise: String,
    /// How often the wanted state is re-applied even without changes.
    pub resync: Duration,
}

/// What should be set up, computed from all Node objects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    network: Option<NodeNetwork>,
    /// Other nodes' subnets and the host addresses to route them through.
    routes: BTreeMap<Ipv4Cidr, Ipv4Addr>,
}

/// Runs until `shutdown`: publishes the node network on `tx` once this node has a subnet and
/// the bridge is up, and keeps the routes to other nodes.
pub async fn watch_node_network(
    config: NodeNetworkConfig,
    mut client: Client,
    tx: watch::Sender<Option<NodeNetwork>>,
    shutdown: CancellationToken,
) {
    let mut applied: Option<Wanted> = None;
    let mut pause = Duration::from_millis(100);
    let mut resync = tokio::time::interval(config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting_logged = false;
    'relist: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let (items, revision) = match client.list(Kind::Node).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "node list failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue 'relist;
            }
        };
        pause = Duration::from_millis(100);
        let mut nodes: BTreeMap<String, Object> = items
            .into_iter()
            .map(|o| (o.metadata.name.clone(), o))
            .collect();
        let mut watch = match client.watch(Kind::Node, revision).await {
            Ok(w) => Some(w),
            Err(ClientError::Expired(_)) => continue 'relist,
            Err(e) => {
                tracing::debug!(error = %e, "node watch failed; re-listing");
                None
            }
        };
        loop {
            let wanted = wanted(&config, &nodes);
            if wanted.network.is_none() && !waiting_logged {
                tracing::info!(node = %config.node, "waiting for the control plane to assign this node a replica subnet");
                waiting_logged = true;
            }
            if applied.as_ref() != Some(&wanted) {
                applied = apply_blocking(&config, wanted, &tx).await;
            }
            let Some(w) = watch.as_mut() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue 'relist;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = resync.tick() => applied = None,
                next = w.next() => match next {
                    Ok(Some(change)) => {
                        let name = change.object.metadata.name.clone();
                        if change.change == EventType::Deleted {
                            nodes.remove(&name);
                        } else {
                            nodes.insert(name, change.object);
                        }
                    }
                    // A lost or compacted watch: listing again is always safe.
                    Ok(None) | Err(_) => continue 'relist,
                },
            }
        }
    }
}

/// Applies `wanted` on a blocking thread; returns what is now applied (`None` after a
/// failure, so the next pass retries).
async fn apply_blocking(
    config: &NodeNetworkConfig,
    wanted: Wanted,
    tx: &watch::Sender<Option<NodeNetwork>>,
) -> Option<Wanted> {
    let w = wanted.clone();
    let result = tokio::task::spawn_blocking(move || apply(&w))
        .await
        .unwrap_or_else(|e| {
            Err(NetworkError::Invalid(format!(
                "network setup panicked: {e}"
            )))
        });
    match result {
        Ok(()) => {
            tx.send_if_modified(|cur| {
                if *cur != wanted.network {
                    if let Some(n) = &wanted.network {
                        tracing::info!(node = %config.node, bridge = %n.bridge, subnet = %n.subnet, gateway = %n.gateway, "node network ready");
                    }
                    *cur = wanted.network.clone();
                    true
                } else {
                    false
                }
            });
            Some(wanted)
        }
        Err(e) => {
            tracing::warn!(node = %config.node, error = %e, "node network setup failed; will retry");
            None
        }
    }
}

/// The wanted state from every Node's spec.
fn wanted(config: &NodeNetworkConfig, nodes: &BTreeMap<String, Object>) -> Wanted {
    let network = nodes
        .get(&config.node)
        .and_then(|o| o.spec_as::<NodeSpec>().ok())
        .and_then(|spec| node_network(config, &spec));
    let mut routes = BTreeMap::new();
    if let Some(net) = &network {
        for (name, obj) in nodes {
            if *name == config.node {
                continue;
            }
            let Ok(spec) = obj.spec_as::<NodeSpec>() else {
                continue;
            };
            let Some(cidr) = spec
                .replica_cidr
                .as_deref()
                .and_then(|c| c.parse::<Ipv4Cidr>().ok())
            else {
                continue;
            };
            let Some(via) = host_ip(&spec.address) else {
                tracing::debug!(node = %name, address = %spec.address, "no routable IPv4 host address; no route to its subnet");
                continue;
            };
            if cidr.overlaps(&net.subnet) || Some(via) == net.node_ip {
                continue;
            }
            routes.insert(cidr, via);
        }
    }
    Wanted { network, routes }
}

/// This node's network from its spec, `None` until the control plane set a usable subnet.
fn node_network(config: &NodeNetworkConfig, spec: &NodeSpec) -> Option<NodeNetwork> {
    let parse = |what: &str, text: Option<&str>, default: Option<&str>| {
        let text = text.or(default)?;
        match text.parse::<Ipv4Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(node = %config.node, field = what, error = %e, "unusable range in the Node spec");
                None
            }
        }
    };
    let subnet = parse("replicaCidr", spec.replica_cidr.as_deref(), None)?;
    if subnet.prefix() > 30 {
        tracing::warn!(node = %config.node, %subnet, "replica subnet is too small (at most /30)");
        return None;
    }
    let cluster_cidr = parse(
        "clusterCidr",
        spec.cluster_cidr.as_deref(),
        Some(DEFAULT_CLUSTER_CIDR),
    )?;
    let service_cidr = parse(
        "serviceCidr",
        spec.service_cidr.as_deref(),
        Some(DEFAULT_SERVICE_CIDR),
    )?;
    Some(NodeNetwork {
        bridge: config.bridge.clone(),
        subnet,
        gateway: subnet.nth(1)?,
        cluster_cidr,
        service_cidr,
        node_ip: host_ip(&config.advertise),
    })
}

/// The IPv4 host part of `host:port`, unless loopback or unspecified (not routable from
/// another node).
pub fn host_ip(address: &str) -> Option<Ipv4Addr> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let ip: Ipv4Addr = host.parse().ok()?;
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Makes the kernel state match `wanted` (blocking).
fn apply(wanted: &Wanted) -> Result<(), NetworkError> {
    let Some(net) = &wanted.network else {
        return Ok(());
    };
    setup_bridge(net)?;
    sync_routes(&wanted.routes, net.gateway)
}

/// Creates the bridge (if missing) with the gateway address, up, and turns on forwarding in
/// this network namespace.
fn setup_bridge(net: &NodeNetwork) -> Result<(), NetworkError> {
    let br = net.bridge.as_str();
    if ip(&["link", "show", "dev", br]).is_err() {
        ip(&["link", "add", br, "type", "bridge"])?;
    }
    // Replica traffic must not pass iptables' FORWARD chain, whatever policy another tool set.
    ip_quiet(&["link", "set", br, "type", "bridge", "nf_call_iptables", "0"]);
    ip(&[
        "addr",
        "replace",
        &format!("{}/{}", net.gateway, net.subnet.prefix()),
        "dev",
        br,
    ])?;
    ip(&["link", "set", br, "up"])?;
    // The node's own connections to a service address need a route before the proxy's
    // `nat output` rules rewrite their destination; the bridge is where they would go anyway.
    ip(&["route", "replace", &net.service_cidr.to_string(), "dev", br])?;
    // Per network namespace: /proc/sys/net shows the namespace of the process reading it.
    let path = "/proc/sys/net/ipv4/ip_forward";
    if !std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1") {
        std::fs::write(path, "1\n").map_err(NetworkError::io("write", path))?;
    }
    Ok(())
}

/// Replaces the routes this agent manages with `routes`.
///
/// Each route carries this node's gateway address as preferred source: replicas route only
/// the cluster and service ranges, so a connection from this node to a replica elsewhere must
/// come from an address in the cluster range to be answered (through this node).
fn sync_routes(
    routes: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let current = ip(&["-4", "-o", "route", "show", "proto", ROUTE_PROTO])?;
    let mut errors = Vec::new();
    for line in current.lines() {
        let mut words = line.split_whitespace();
        let Some(dst) = words.next().and_then(|d| d.parse::<Ipv4Cidr>().ok()) else {
            continue;
        };
        let via = line
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .and_then(|v| v.parse::<Ipv4Addr>().ok());
        if routes.get(&dst).copied() != via || via.is_none() {
            tracing::info!(subnet = %dst, "removing route of a node that is gone or moved");
            if let Err(e) = ip(&["route", "del", &dst.to_string(), "proto", ROUTE_PROTO]) {
                errors.push(e.to_string());
            }
        }
    }
    for (dst, via) in routes {
        let r = ip(&[
            "route",
            "replace",
            &dst.to_string(),
            "via",
            &via.to_string(),
            "src",
            &gateway.to_string(),
            "proto",
            ROUTE_PROTO,
        ]);
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::Invalid(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str, cidr: Option<&str>) -> Object {
        let mut o = Object::new(Kind::Node, name);
        o.set_spec(&NodeSpec {
            address: address.into(),
            replica_cidr: cidr.map(str::to_string),
            ..NodeSpec::default()
        });
        o
    }

    fn config() -> NodeNetworkConfig {
        NodeNetworkConfig {
            node: "n1".into(),
            bridge: "gantry0".into(),
            advertise: "10.213.5.2:7000".into(),
            resync: Duration::from_secs(10),
        }
    }

    #[test]
    fn nothing_is_wanted_until_this_node_has_a_subnet() {
        let nodes = BTreeMap::from([
            ("n1".to_string(), node("n1", "10.213.5.2:7000", None)),
            (
                "n2".to_string(),
                node("n2", "10.213.5.3:7000", Some("10.214.2.0/24")),
            ),
        ]);
        let w = wanted(&config(), &nodes);
        assert_eq!(w.network, None);
        assert!(w.routes.is_empty());
    }

    #[test]
    fn other_nodes_subnets_route_through_their_host_addresses() {
        let nodes = BTreeMap::from([
            (
                "n1".to_string(),
                node("n1", "10.213.5.2:7000", Some("10.214.1.0/24")),
            ),
            (
                "n2".to_string(),
                node("n2", "10.213.5.3:7000", Some("10.214.2.0/24")),
            ),
            // Loopback addresses are not routable from here; no subnet yet: skipped.
            (
                "n3".to_string(),
                node("n3", "127.0.0.1:7000", Some("10.214.3.0/24")),
            ),
            ("n4".to_string(), node("n4", "10.213.5.5:7000", None)),
        ]);
        let w = wanted(&config(), &nodes);
        let net = w.network.expect("this node has a subnet");
        assert_eq!(net.gateway, "10.214.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(net.cluster_cidr.to_string(), DEFAULT_CLUSTER_CIDR);
        assert_eq!(net.service_cidr.to_string(), DEFAULT_SERVICE_CIDR);
        assert_eq!(net.node_ip, Some("10.213.5.2".parse().unwrap()));
        assert_eq!(
            w.routes,
            BTreeMap::from([(
                "10.214.2.0/24".parse().unwrap(),
                "10.213.5.3".parse().unwrap()
            )])
        );
    }

    #[test]
    fn host_ip_takes_the_host_part_of_an_address() {
        assert_eq!(host_ip("10.0.0.7:7000"), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(host_ip("127.0.0.1:7000"), None);
        assert_eq!(host_ip("node-a:7000"), None);
        assert_eq!(host_ip(""), None);
    }
}
