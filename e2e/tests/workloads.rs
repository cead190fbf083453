//! Services in a real local cluster: `gantry cluster up` with servers and agents in their own
//! network namespaces, manifests applied with the CLI, real containers on the agents.

use gantry_api::model::{NodeStatus, Phase, ReplicaSpec, ReplicaStatus};
use gantry_api::objects::{Kind, Object};
use gantry_e2e::{eventually, runtime, serial, TestCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A service of `replicas` sleeping workloads.
fn manifest(dir: &std::path::Path, name: &str, replicas: u32) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: gantry/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  template:\n    image: gantry/sample:latest\n    command: [\"/app/gantry-workload\", \"sleep\", \"infinity\"]\n    resources:\n      requests: {{cpu: 10m, memory: 8Mi}}\n"
        ),
    )
    .expect("write manifest");
    path.display().to_string()
}

/// A replica as the tests see it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    node: Option<String>,
    phase: Phase,
    ready: bool,
    restarts: u32,
    container: Option<String>,
}

async fn replicas_of(cluster: &TestCluster, service: &str) -> BTreeMap<String, Seen> {
    let mut client = cluster.client().await.expect("client");
    let (items, _) = client.list(Kind::Replica).await.expect("list replicas");
    items
        .iter()
        .filter_map(|o: &Object| {
            let spec: ReplicaSpec = o.spec_as().ok()?;
            let status: ReplicaStatus = o.status_as().ok()?;
            (spec.service == service).then(|| {
                (
                    o.metadata.name.clone(),
                    Seen {
                        node: spec.node_name,
                        phase: status.phase,
                        ready: status.ready,
                        restarts: status.restart_count,
                        container: status.container_id,
                    },
                )
            })
        })
        .collect()
}

/// Waits until `service` has exactly `n` replicas, all running and ready.
async fn all_ready(
    cluster: &TestCluster,
    service: &str,
    n: usize,
    within: Duration,
) -> BTreeMap<String, Seen> {
    eventually(
        &format!("{n} ready replicas of {service}"),
        within,
        || async {
            let r = replicas_of(cluster, service).await;
            (r.len() == n && r.values().all(|s| s.ready && s.phase == Phase::Running)).then_some(r)
        },
    )
    .await
    .unwrap()
}

/// The running containers (ids) in an agent's runtime root.
fn running_containers(cluster: &TestCluster, agent: &str) -> BTreeSet<String> {
    let root = cluster.dir().join("agents").join(agent);
    let out = cluster
        .gantry_ok(&["--root", &root.display().to_string(), "ps", "-q"])
        .expect("ps");
    out.split_whitespace().map(str::to_string).collect()
}

#[test]
fn apply_spreads_replicas_and_scaling_one_service_leaves_another_untouched() {
    let _one = serial();
    let cluster = TestCluster::up(3, 2).expect("cluster up");
    let web = manifest(&cluster.dir(), "web", 4);
    let api = manifest(&cluster.dir(), "api", 2);
    let out = cluster
        .gantry_ok(&[
            "apply",
            "-f",
            &web,
            "-f",
            &api,
            "--wait",
            "--timeout",
            "60s",
        ])
        .expect("apply --wait");
    assert!(
        out.contains("service/web created") && out.contains("service/api created"),
        "{out}"
    );
    let rt = runtime();
    let web_before = rt.block_on(all_ready(&cluster, "web", 4, Duration::from_secs(30)));
    let api_before = rt.block_on(all_ready(&cluster, "api", 2, Duration::from_secs(30)));
    let per_node = |r: &BTreeMap<String, Seen>| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for s in r.values() {
            *m.entry(s.node.clone().unwrap_or_default()).or_default() += 1;
        }
        m
    };
    assert_eq!(
        per_node(&web_before).values().copied().collect::<Vec<_>>(),
        vec![2, 2],
        "web is not spread over both agents: {web_before:?}"
    );

    cluster
        .gantry_ok(&[
            "scale",
            "service",
            "web",
            "--replicas",
            "7",
            "--wait",
            "--timeout",
            "60s",
        ])
        .expect("scale up");
    rt.block_on(all_ready(&cluster, "web", 7, Duration::from_secs(30)));
    cluster
        .gantry_ok(&[
            "scale",
            "service",
            "web",
            "--replicas",
            "1",
            "--wait",
            "--timeout",
            "60s",
        ])
        .expect("scale down");
    rt.block_on(all_ready(&cluster, "web", 1, Duration::from_secs(30)));

    let api_after = rt.block_on(replicas_of(&cluster, "api"));
    assert_eq!(
        api_after, api_before,
        "scaling web changed api's replicas (names, nodes, containers or restarts)"
    );
}

#[test]
fn sigkill_of_an_agent_moves_its_replicas_and_its_return_removes_the_stale_copies() {
    let _one = serial();
    let cluster = TestCluster::up(1, 2).expect("cluster up");
    let web = manifest(&cluster.dir(), "web", 4);
    cluster
        .gantry_ok(&["apply", "-f", &web, "--wait", "--timeout", "60s"])
        .expect("apply --wait");
    let rt = runtime();
    let before = rt.block_on(all_ready(&cluster, "web", 4, Duration::from_secs(30)));
    let on_n1: BTreeSet<String> = before
        .iter()
        .filter(|(_, s)| s.node.as_deref() == Some("n1"))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!on_n1.is_empty(), "nothing ran on n1: {before:?}");
    let stale = running_containers(&cluster, "n1");
    assert_eq!(stale.len(), on_n1.len());

    let killed = Instant::now();
    cluster.member("kill", "n1").unwrap();
    // The node goes NotReady, then its replicas are replaced on n2.
    rt.block_on(eventually(
        "n1 NotReady",
        Duration::from_secs(20),
        || async {
            let mut c = cluster.client().await.ok()?;
            let n = c.get(Kind::Node, "n1").await.ok()??;
            let s: NodeStatus = n.status_as().ok()?;
            (!s.ready).then_some(())
        },
    ))
    .unwrap();
    let after = rt
        .block_on(eventually(
            "every replica ready on n2",
            Duration::from_secs(30),
            || async {
                let r = replicas_of(&cluster, "web").await;
                (r.len() == 4
                    && r.values()
                        .all(|s| s.ready && s.node.as_deref() == Some("n2")))
                .then_some(r)
            },
        ))
        .unwrap();
    let moved = killed.elapsed();
    for name in &on_n1 {
        assert!(
            !after.contains_key(name),
            "lost replica {name} still exists"
        );
    }
    eprintln!("figure: replicas of a SIGKILLed agent ready elsewhere after {moved:?}");
    // Its containers kept running while it was gone (their shims outlive the agent).
    assert_eq!(running_containers(&cluster, "n1"), stale);

    // Back again, it stops the copies that were replaced: never two copies for long.
    cluster.member("start", "n1").unwrap();
    rt.block_on(eventually(
        "n1 to remove its stale containers",
        Duration::from_secs(30),
        || async { running_containers(&cluster, "n1").is_empty().then_some(()) },
    ))
    .unwrap();
    let settled = rt.block_on(all_ready(&cluster, "web", 4, Duration::from_secs(10)));
    assert_eq!(
        settled.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
}

#[test]
fn an_agent_restart_keeps_and_readopts_its_containers() {
    let _one = serial();
    let cluster = TestCluster::up(1, 1).expect("cluster up");
    let web = manifest(&cluster.dir(), "web", 3);
    cluster
        .gantry_ok(&["apply", "-f", &web, "--wait", "--timeout", "60s"])
        .expect("apply --wait");
    let rt = runtime();
    let before = rt.block_on(all_ready(&cluster, "web", 3, Duration::from_secs(30)));
    let containers = running_containers(&cluster, "n1");
    assert_eq!(containers.len(), 3);

    cluster.member("stop", "n1").unwrap();
    assert_eq!(
        running_containers(&cluster, "n1"),
        containers,
        "stopping the agent stopped containers"
    );
    cluster.member("start", "n1").unwrap();
    // Re-adopted: same replicas, same containers, no restarts, nothing started twice.
    let after = rt
        .block_on(eventually(
            "the agent to report again",
            Duration::from_secs(30),
            || async {
                let mut c = cluster.client().await.ok()?;
                let n = c.get(Kind::Node, "n1").await.ok()??;
                let s: NodeStatus = n.status_as().ok()?;
                if !s.ready {
                    return None;
                }
                let r = replicas_of(&cluster, "web").await;
                (r.values().all(|s| s.ready)).then_some(r)
            },
        ))
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(running_containers(&cluster, "n1"), containers);
}
