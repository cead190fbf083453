//! From Service and Replica objects to what the data path serves: for every port of every
//! service with a virtual address, the ready replicas' `address:port` pairs, and the nodePort
//! this service publishes (when it owns it, per [`node_port_owners`]).
//!
//! [`compute`] is a pure function of its inputs and its output is sorted, so equal clusters
//! always give equal rulesets (the sync loop compares ruleset text to skip no-op updates).

use gantry_api::model::{
    node_port_owners, Phase, PortRef, Protocol, ReplicaSpec, ReplicaStatus, ServiceSpec,
    ServiceStatus,
};
use gantry_api::objects::Object;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The parts of a Service object the proxy uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    /// `metadata.creationTimestamp`, which settles contested nodePorts.
    pub created: Option<String>,
    /// The desired ports.
    pub spec: ServiceSpec,
    /// The virtual address (`status.clusterIP`).
    pub status: ServiceStatus,
}

impl ServiceEntry {
    /// The entry of a Service object; `None` (logged) when its spec does not parse, so one
    /// broken object cannot stop the others from being served.
    pub fn from_object(obj: &Object) -> Option<Self> {
        let spec = match obj.spec_as::<ServiceSpec>() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %obj.metadata.name, error = %e, "service spec unreadable; not served");
                return None;
            }
        };
        let status = obj.status_as::<ServiceStatus>().unwrap_or_default();
        Some(ServiceEntry {
            created: obj.metadata.creation_timestamp.clone(),
            spec,
            status,
        })
    }
}

/// The parts of a Replica object the proxy uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaEntry {
    /// The service and the container template (for named target ports).
    pub spec: ReplicaSpec,
    /// Phase, readiness and address.
    pub status: ReplicaStatus,
}

impl ReplicaEntry {
    /// The entry of a Replica object; `None` when its spec does not parse.
    pub fn from_object(obj: &Object) -> Option<Self> {
        let spec = obj.spec_as::<ReplicaSpec>().ok()?;
        let status = obj.status_as::<ReplicaStatus>().unwrap_or_default();
        Some(ReplicaEntry { spec, status })
    }
}

/// One service with a virtual address and its ports' endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// The service's name (a DNS-1123 label).
    pub service: String,
    /// Its virtual address.
    pub cluster_ip: Ipv4Addr,
    /// Its ports, in spec order.
    pub ports: Vec<PortEndpoints>,
}

/// One port of a service and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEndpoints {
    /// The port's name, if any.
    pub name: Option<String>,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the virtual address.
    pub port: u16,
    /// The nodePort this service publishes on every node address, only when it owns it.
    pub node_port: Option<u16>,
    /// Ready replicas' addresses with the resolved target port, sorted, without duplicates.
    pub endpoints: Vec<SocketAddrV4>,
}

/// Whether `name` can be put into nftables chain names and DNS answers as is.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The endpoints of every service that has a virtual address, sorted by service name.
///
/// A replica is an endpoint of its service (`spec.service`) when it is `Running`, `ready`
/// and has a `replicaIp`; a named `targetPort` resolves through that replica's own template
/// (a replica lacking the name is no endpoint of that port). Services without a valid
/// `clusterIP` or with a name that is not a DNS label are left out.
pub fn compute(
    services: &BTreeMap<String, ServiceEntry>,
    replicas: &BTreeMap<String, ReplicaEntry>,
) -> Vec<ServiceEndpoints> {
    let owners = node_port_owners(
        services
            .iter()
            .map(|(name, s)| (name.as_str(), s.created.as_deref(), &s.spec)),
    );
    let mut ready: BTreeMap<&str, Vec<(Ipv4Addr, &ReplicaEntry)>> = BTreeMap::new();
    for r in replicas.values() {
        if r.status.phase != Phase::Running || !r.status.ready {
            continue;
        }
        let Some(ip) = r
            .status
            .replica_ip
            .as_deref()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        ready
            .entry(r.spec.service.as_str())
            .or_default()
            .push((ip, r));
    }
    let mut out = Vec::new();
    for (name, svc) in services {
        if !is_dns_label(name) {
            continue;
        }
        let Some(cluster_ip) = svc
            .status
            .cluster_ip
            .as_deref()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let members = ready.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let ports = svc
            .spec
            .ports
            .iter()
            .map(|p| {
                let mut endpoints: Vec<SocketAddrV4> = members
                    .iter()
                    .filter_map(|(ip, r)| {
                        target_port(p.target_port.as_ref(), p.port, p.protocol, r)
                            .map(|port| SocketAddrV4::new(*ip, port))
                    })
                    .collect();
                endpoints.sort();
                endpoints.dedup();
                let node_port = p.node_port.filter(|np| {
                    owners.get(&(p.protocol, *np)).map(String::as_str) == Some(name.as_str())
                });
                PortEndpoints {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: p.port,
                    node_port,
                    endpoints,
                }
            })
            .collect();
        out.push(ServiceEndpoints {
            service: name.clone(),
            cluster_ip,
            ports,
        });
    }
    out
}

/// The replica's port for a service port: a number as is, a name through the replica's
/// template ports of the same protocol, or the service port when unset. Port 0 is no port.
fn target_port(
    target: Option<&PortRef>,
    port: u16,
    protocol: Protocol,
    replica: &ReplicaEntry,
) -> Option<u16> {
    let p = match target {
        None => port,
        Some(PortRef::Number(n)) => *n,
        Some(PortRef::Name(name)) => {
            replica
                .spec
                .template
                .ports
                .iter()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()) && cp.protocol == protocol)?
                .container_port
        }
    };
    (p != 0).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::model::{ContainerPort, ContainerTemplate, ServicePort};

    fn service(ports: Vec<ServicePort>, ip: Option<&str>, created: &str) -> ServiceEntry {
        ServiceEntry {
            created: Some(created.into()),
            spec: ServiceSpec {
                replicas: 1,
                template: ContainerTemplate::default(),
                strategy: Default::default(),
                node_selector: Default::default(),
                ports,
            },
            status: ServiceStatus {
                cluster_ip: ip.map(Into::into),
                ..Default::default()
            },
        }
    }

    fn port(p: u16, target: Option<PortRef>, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: None,
            port: p,
            target_port: target,
            protocol: Protocol::TCP,
            node_port,
        }
    }

    fn replica(svc: &str, ip: Option<&str>, phase: Phase, ready: bool) -> ReplicaEntry {
        ReplicaEntry {
            spec: ReplicaSpec {
                service: svc.into(),
                node_name: Some("n1".into()),
                template: ContainerTemplate {
                    image: "i".into(),
                    ports: vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Protocol::TCP,
                    }],
                    ..Default::default()
                },
                template_hash: String::new(),
                node_selector: Default::default(),
            },
            status: ReplicaStatus {
                phase,
                ready,
                replica_ip: ip.map(Into::into),
                ..Default::default()
            },
        }
    }

    fn map<T>(items: Vec<(&str, T)>) -> BTreeMap<String, T> {
        items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn only_ready_running_replicas_with_an_address_are_endpoints() {
        let services = map(vec![(
            "web",
            service(vec![port(80, None, None)], Some("10.215.0.10"), "t1"),
        )]);
        let replicas = map(vec![
            (
                "a",
                replica("web", Some("10.214.3.3"), Phase::Running, true),
            ),
            (
                "b",
                replica("web", Some("10.214.3.2"), Phase::Running, true),
            ),
            (
                "c",
                replica("web", Some("10.214.3.4"), Phase::Running, false),
            ),
            (
                "d",
                replica("web", Some("10.214.3.5"), Phase::Pending, true),
            ),
            ("e", replica("web", None, Phase::Running, true)),
            ("f", replica("web", Some("garbage"), Phase::Running, true)),
            (
                "g",
                replica("other", Some("10.214.3.6"), Phase::Running, true),
            ),
        ]);
        let out = compute(&services, &replicas);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cluster_ip, Ipv4Addr::new(10, 215, 0, 10));
        // Sorted, so equal inputs render equal rulesets.
        assert_eq!(
            out[0].ports[0].endpoints,
            vec![
                "10.214.3.2:80".parse().unwrap(),
                "10.214.3.3:80".parse().unwrap()
            ]
        );
    }

    #[test]
    fn target_ports_resolve_by_number_and_by_the_replicas_own_port_names() {
        let services = map(vec![(
            "web",
            service(
                vec![
                    port(80, Some(PortRef::Name("http".into())), None),
                    port(81, Some(PortRef::Number(9000)), None),
                    port(82, Some(PortRef::Name("nope".into())), None),
                ],
                Some("10.215.0.10"),
                "t1",
            ),
        )]);
        let mut r = replica("web", Some("10.214.3.2"), Phase::Running, true);
        let replicas = map(vec![("a", r.clone())]);
        let out = compute(&services, &replicas);
        let eps: Vec<_> = out[0].ports.iter().map(|p| p.endpoints.clone()).collect();
        assert_eq!(eps[0], vec!["10.214.3.2:8080".parse().unwrap()]);
        assert_eq!(eps[1], vec!["10.214.3.2:9000".parse().unwrap()]);
        assert!(eps[2].is_empty(), "an unknown name yields no endpoint");

        // A named port of another protocol does not match.
        r.spec.template.ports[0].protocol = Protocol::UDP;
        let out = compute(&services, &map(vec![("a", r)]));
        assert!(out[0].ports[0].endpoints.is_empty());
    }

    #[test]
    fn services_without_a_cluster_ip_are_not_served() {
        let services = map(vec![
            ("a", service(vec![port(80, None, None)], None, "t1")),
            ("b", service(vec![port(80, None, None)], Some("bad"), "t1")),
            (
                "Bad_Name",
                service(vec![port(80, None, None)], Some("10.215.0.9"), "t1"),
            ),
        ]);
        assert!(compute(&services, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_contested_node_port_is_published_only_by_its_oldest_claimant() {
        let services = map(vec![
            (
                "old",
                service(vec![port(80, None, Some(30080))], Some("10.215.0.1"), "t1"),
            ),
            (
                "new",
                service(vec![port(80, None, Some(30080))], Some("10.215.0.2"), "t2"),
            ),
        ]);
        let out = compute(&services, &BTreeMap::new());
        let by_name: BTreeMap<_, _> = out.iter().map(|s| (s.service.as_str(), s)).collect();
        assert_eq!(by_name["old"].ports[0].node_port, Some(30080));
        assert_eq!(by_name["new"].ports[0].node_port, None);
    }

    #[test]
    fn entries_read_from_objects() {
        let mut svc = Object::new(gantry_api::objects::Kind::Service, "web");
        svc.spec = serde_json::json!({"template": {"image": "i"}, "ports": [{"port": 80}]});
        svc.status = serde_json::json!({"clusterIP": "10.215.0.10"});
        let e = ServiceEntry::from_object(&svc).unwrap();
        assert_eq!(e.status.cluster_ip.as_deref(), Some("10.215.0.10"));
        svc.spec = serde_json::json!({"nonsense": 1});
        assert!(ServiceEntry::from_object(&svc).is_none());

        let mut rep = Object::new(gantry_api::objects::Kind::Replica, "web-1");
        rep.spec = serde_json::json!({"service": "web", "template": {"image": "i"}});
        rep.status =
            serde_json::json!({"phase": "Running", "ready": true, "replicaIp": "10.214.3.2"});
        let r = ReplicaEntry::from_object(&rep).unwrap();
        assert!(r.status.ready);
        assert_eq!(r.status.replica_ip.as_deref(), Some("10.214.3.2"));
    }
}
