//! The network controller against real members over loopback gRPC: node subnets (distinct,
//! reused after a node is deleted, exhaustion reported and explained by the scheduler),
//! services' virtual addresses (distinct, stable across a leader change, released with the
//! ports or the service) and node port conflicts.

mod common;

use common::*;
use gantry_api::model::{NodeSpec, ServiceStatus};
use gantry_api::net::Ipv4Cidr;
use gantry_api::objects::{Kind, Object};
use gantry_control_plane::controllers::ControllerConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

fn config() -> ControllerConfig {
    ControllerConfig {
        // Nodes here never heartbeat: they must stay ready for the whole test.
        node_lease: Duration::from_secs(600),
        resync: Duration::from_millis(500),
        debounce: Duration::from_millis(10),
        ..ControllerConfig::default()
    }
}

/// A ready node with room for a few small replicas.
async fn add_node(c: &mut Client, name: &str) {
    create(c, &ready_node(name)).await;
}

/// Waits until each of `names` has a replica subnet; answers them by node.
async fn subnets(c: &mut Client, names: &[&str]) -> BTreeMap<String, Ipv4Cidr> {
    wait_for(&format!("subnets of {names:?}"), || {
        let mut c = c.clone();
        async move {
            let nodes = list(&mut c, Kind::Node).await;
            let mut out = BTreeMap::new();
            for name in names {
                let n = nodes.iter().find(|n| n.metadata.name == *name)?;
                let spec: NodeSpec = n.spec_as().ok()?;
                out.insert(name.to_string(), spec.replica_cidr?.parse().ok()?);
            }
            Some(out)
        }
    })
    .await
}

/// A service of `replicas` small replicas with `ports` (a JSON array).
fn service(name: &str, replicas: u32, ports: serde_json::Value) -> Object {
    let mut o = Object::new(Kind::Service, name);
    o.spec = serde_json::json!({
        "replicas": replicas,
        "template": {"image": "app:1", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
        "ports": ports,
    });
    o
}

fn status(o: &Object) -> ServiceStatus {
    o.status_as().expect("service status")
}

/// Waits until `name`'s status satisfies `f`; answers the status.
async fn wait_status(
    c: &mut Client,
    name: &str,
    what: &str,
    f: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    wait_for(&format!("{name}: {what}"), || {
        let mut c = c.clone();
        let f = &f;
        async move {
            let st = status(&get(&mut c, Kind::Service, name).await?);
            f(&st).then_some(st)
        }
    })
    .await
}

async fn cluster_ip(c: &mut Client, name: &str) -> Ipv4Addr {
    let st = wait_status(c, name, "a clusterIP", |s| s.cluster_ip.is_some()).await;
    st.cluster_ip.unwrap().parse().expect("an IPv4 address")
}

async fn events(c: &mut Client, reason: &str) -> Vec<(String, String)> {
    list(c, Kind::Event)
        .await
        .iter()
        .filter(|e| e.spec["reason"] == reason)
        .map(|e| {
            (
                e.spec["involvedObject"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                e.spec["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_get_distinct_subnets_and_a_deleted_nodes_subnet_is_reused() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &with_controllers(config())).await;
    let mut c = m.client().await;

    // Three nodes, three distinct /24s of the default range, lowest first, with the ranges
    // the agents route beside them.
    for n in ["n1", "n2", "n3"] {
        add_node(&mut c, n).await;
    }
    let got = subnets(&mut c, &["n1", "n2", "n3"]).await;
    let distinct: BTreeSet<Ipv4Cidr> = got.values().copied().collect();
    assert_eq!(distinct.len(), 3, "{got:?}");
    let expected: BTreeSet<Ipv4Cidr> = ["10.214.0.0/24", "10.214.1.0/24", "10.214.2.0/24"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(distinct, expected);
    let n1: NodeSpec = get(&mut c, Kind::Node, "n1")
        .await
        .unwrap()
        .spec_as()
        .unwrap();
    assert_eq!(n1.cluster_cidr.as_deref(), Some("10.214.0.0/16"));
    assert_eq!(n1.service_cidr.as_deref(), Some("10.215.0.0/16"));

    // An agent rewriting its own spec fields (typed, as node-agent does) keeps the subnet.
    modify(&mut c, Kind::Node, "n1", |n| {
        let mut spec: NodeSpec = n.spec_as().unwrap();
        spec.address = "127.0.0.1:2".into();
        n.set_spec(&spec);
    })
    .await;
    assert_eq!(subnets(&mut c, &["n1"]).await["n1"], got["n1"]);

    // Deleting n2 frees its subnet: the next node gets it, not a fresh one.
    delete(&mut c, Kind::Node, "n2").await;
    add_node(&mut c, "n4").await;
    let n4 = subnets(&mut c, &["n4"]).await["n4"];
    assert_eq!(n4, got["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_cluster_range_leaves_a_node_without_subnet_and_the_scheduler_says_so() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    // Room for two /24 node subnets only.
    let cfg = ControllerConfig {
        cluster_cidr: "10.214.0.0/23".parse().unwrap(),
        ..config()
    };
    let m = one_member(root.path(), &with_controllers(cfg)).await;
    let mut c = m.client().await;
    for n in ["n1", "n2"] {
        add_node(&mut c, n).await;
    }
    subnets(&mut c, &["n1", "n2"]).await;
    add_node(&mut c, "n3").await;

    // The third node gets a Warning event naming the range and how full it is, and no
    // subnet.
    let warned = wait_for("a SubnetExhausted event", || {
        let mut c = c.clone();
        async move {
            let e = events(&mut c, "SubnetExhausted").await;
            (!e.is_empty()).then_some(e)
        }
    })
    .await;
    assert_eq!(
        warned,
        [(
            "n3".to_string(),
            "no free /24 subnet in cluster range 10.214.0.0/23: its 2 subnets are held by 2 nodes"
                .to_string()
        )]
    );
    let n3: NodeSpec = get(&mut c, Kind::Node, "n3")
        .await
        .unwrap()
        .spec_as()
        .unwrap();
    assert_eq!(n3.replica_cidr, None);

    // A replica too big for n1 and n2 explains that n3 has no subnet.
    let mut big = service("big", 1, serde_json::json!([]));
    big.spec["template"]["resources"]["requests"]["memory"] = "4Gi".into();
    create(&mut c, &big).await;
    let msg = unschedulable_message(&mut c, "big").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 2 insufficient memory, 1 no replica subnet"
    );

    // A node leaving frees a subnet, which the waiting node gets.
    let held = subnets(&mut c, &["n1"]).await["n1"];
    delete(&mut c, Kind::Node, "n1").await;
    assert_eq!(subnets(&mut c, &["n3"]).await["n3"], held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_get_distinct_stable_cluster_ips_that_survive_a_leader_change() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster(root.path(), &with_controllers(config())).await;
    let leader = leader_index(&members).await;
    let other = (leader + 1) % 3;
    let mut c = members[other].client().await;
    let http = serde_json::json!([{"port": 80}]);

    // Two services with ports get distinct addresses of the service range, past the reserved
    // ones; a port-less one gets none.
    create(&mut c, &service("a", 0, http.clone())).await;
    let a = cluster_ip(&mut c, "a").await;
    create(&mut c, &service("b", 0, http.clone())).await;
    create(&mut c, &service("plain", 0, serde_json::json!([]))).await;
    let b = cluster_ip(&mut c, "b").await;
    assert_eq!(
        (a, b),
        (Ipv4Addr::new(10, 215, 0, 2), Ipv4Addr::new(10, 215, 0, 3))
    );
    // The controllers have seen "plain" once a later service has its address.
    create(&mut c, &service("c", 0, http.clone())).await;
    let c_ip = cluster_ip(&mut c, "c").await;
    assert_eq!(c_ip, Ipv4Addr::new(10, 215, 0, 4));
    let plain = status(&get(&mut c, Kind::Service, "plain").await.unwrap());
    assert_eq!(plain.cluster_ip, None);

    // Kill the leader. The new one renumbers nothing, and hands out the next free address.
    let mut old = members.remove(leader);
    old.stop().await;
    leader_index(&members).await;
    let mut c = members[0].client().await;
    create(&mut c, &service("d", 0, http.clone())).await;
    assert_eq!(cluster_ip(&mut c, "d").await, Ipv4Addr::new(10, 215, 0, 5));
    for (name, ip) in [("a", a), ("b", b), ("c", c_ip)] {
        assert_eq!(
            cluster_ip(&mut c, name).await,
            ip,
            "{name} kept its address"
        );
    }

    // Deleting a service or removing its ports releases its address for the next service.
    delete(&mut c, Kind::Service, "a").await;
    modify(&mut c, Kind::Service, "b", |s| {
        s.spec.as_object_mut().unwrap().remove("ports");
    })
    .await;
    wait_status(&mut c, "b", "no clusterIP", |s| s.cluster_ip.is_none()).await;
    create(&mut c, &service("e", 0, http.clone())).await;
    assert_eq!(cluster_ip(&mut c, "e").await, a);
    create(&mut c, &service("f", 0, http)).await;
    assert_eq!(cluster_ip(&mut c, "f").await, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_port_conflict_sets_network_error_on_the_younger_service_only() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &with_controllers(config())).await;
    let mut c = m.client().await;
    let port = |np: u16| serde_json::json!([{"port": 80, "nodePort": np}]);

    // "web" declares the node port "api" already publishes: only web is told, by status and
    // by a Warning event; both keep their addresses.
    create(&mut c, &service("api", 0, port(30080))).await;
    cluster_ip(&mut c, "api").await;
    create(&mut c, &service("web", 0, port(30080))).await;
    let web = wait_status(&mut c, "web", "a networkError", |s| {
        s.network_error.is_some()
    })
    .await;
    assert_eq!(
        web.network_error.as_deref(),
        Some("nodePort 30080/TCP is already published by service \"api\"")
    );
    assert!(web.cluster_ip.is_some());
    let api = status(&get(&mut c, Kind::Service, "api").await.unwrap());
    assert_eq!(api.network_error, None);
    let warned = events(&mut c, "NodePortInUse").await;
    assert_eq!(
        warned,
        [(
            "web".to_string(),
            "nodePort 30080/TCP is already published by service \"api\"".to_string()
        )]
    );

    // Moving web to a free node port clears the error.
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["ports"][0]["nodePort"] = 30081.into()
    })
    .await;
    wait_status(&mut c, "web", "no networkError", |s| {
        s.network_error.is_none()
    })
    .await;
    let api = status(&get(&mut c, Kind::Service, "api").await.unwrap());
    assert_eq!(api.network_error, None);
}
