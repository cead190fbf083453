//! The leader-only controllers against real members over loopback gRPC, with fake nodes
//! (Node objects heartbeated by the test) and a fake agent (marking bound replicas ready).

mod common;

use common::*;
use gantry_api::model::{NodeStatus, Phase, ReplicaSpec, ReplicaStatus, ServiceStatus};
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::{DeleteRequest, UpdateRequest};
use gantry_control_plane::controllers::ControllerConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config() -> ControllerConfig {
    ControllerConfig {
        // Long enough that a test task starved on a loaded two-core machine (CI runs tests in
        // parallel) is not taken for a dead node.
        node_lease: Duration::from_millis(2000),
        node_grace: Duration::from_millis(1000),
        resync: Duration::from_millis(500),
        debounce: Duration::from_millis(10),
        ..ControllerConfig::default()
    }
}

fn opts() -> Options {
    with_controllers(config())
}

fn service(name: &str, replicas: u32, extra: serde_json::Value) -> Object {
    let mut spec = serde_json::json!({
        "replicas": replicas,
        "template": {"image": "app:1", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let mut o = Object::new(Kind::Service, name);
    o.spec = spec;
    o
}

/// A fake fleet: registers nodes, heartbeats the live ones and marks replicas bound to them
/// Running and ready, until dropped.
struct Fleet {
    alive: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fleet(addr: &str, nodes: &[(&str, serde_json::Value)]) -> Fleet {
    let mut c = client(addr).await;
    for (name, labels) in nodes {
        let mut o = ready_node(name);
        o.metadata.labels = serde_json::from_value(labels.clone()).unwrap_or_default();
        create(&mut c, &o).await;
    }
    // The network controller gives each node its replica subnet; until then the scheduler
    // would explain "no replica subnet", which is not what these tests look at.
    wait_for("every node to have a replica subnet", || {
        let mut c = c.clone();
        async move {
            let all = list(&mut c, Kind::Node).await;
            all.iter()
                .filter(|n| nodes.iter().any(|(name, _)| *name == n.metadata.name))
                .all(|n| n.spec["replicaCidr"].is_string())
                .then_some(())
        }
    })
    .await;
    let alive = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<BTreeSet<String>>(),
    ));
    let live = alive.clone();
    let addr = addr.to_string();
    let task = tokio::spawn(async move {
        let mut c = client(&addr).await;
        loop {
            let live: BTreeSet<String> = live.lock().unwrap().clone();
            for n in list(&mut c, Kind::Node).await {
                if live.contains(&n.metadata.name) {
                    let mut n = n;
                    let mut st: NodeStatus = n.status_as().unwrap();
                    st.last_heartbeat = Some(gantry_api::events::now_rfc3339_millis());
                    n.set_status(&st);
                    let _ = c
                        .update(UpdateRequest {
                            object: envelope(&n),
                        })
                        .await;
                }
            }
            for r in list(&mut c, Kind::Replica).await {
                let spec: ReplicaSpec = r.spec_as().unwrap();
                let st: ReplicaStatus = r.status_as().unwrap();
                let on_live = spec.node_name.as_ref().is_some_and(|n| live.contains(n));
                if on_live && !st.ready {
                    let mut r = r;
                    r.set_status(&ReplicaStatus {
                        phase: Phase::Running,
                        ready: true,
                        ..st
                    });
                    let _ = c
                        .update(UpdateRequest {
                            object: envelope(&r),
                        })
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Fleet { alive, task }
}

fn replicas_of<'a>(all: &'a [Object], service: &str) -> Vec<&'a Object> {
    all.iter()
        .filter(|r| r.spec_as::<ReplicaSpec>().unwrap().service == service)
        .collect()
}

/// Waits until `service` has `n` replicas, all bound and ready, and its status says so.
async fn wait_ready(c: &mut Client, service: &str, n: usize) -> Vec<Object> {
    wait_for(&format!("{n} ready replicas of {service}"), || {
        let mut c = c.clone();
        async move {
            let all = list(&mut c, Kind::Replica).await;
            let mine: Vec<Object> = replicas_of(&all, service).into_iter().cloned().collect();
            let ok = mine.len() == n
                && mine.iter().all(|r| {
                    r.status_as::<ReplicaStatus>().unwrap().ready
                        && r.spec_as::<ReplicaSpec>().unwrap().node_name.is_some()
                });
            let svc = get(&mut c, Kind::Service, service).await?;
            let st: ServiceStatus = svc.status_as().unwrap();
            (ok && st.ready_replicas as usize == n && st.updated_replicas as usize == n)
                .then_some(mine)
        }
    })
    .await
}

/// Waits until service `name` has a clusterIP; answers it.
async fn cluster_ip(c: &mut Client, name: &str) -> String {
    wait_for(&format!("{name}'s clusterIP"), || {
        let mut c = c.clone();
        async move {
            let st: ServiceStatus = get(&mut c, Kind::Service, name).await?.status_as().ok()?;
            st.cluster_ip
        }
    })
    .await
}

fn per_node(replicas: &[Object]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replicas {
        let node = r.spec_as::<ReplicaSpec>().unwrap().node_name.unwrap();
        *m.entry(node).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_spreads_replicas_and_scaling_one_service_leaves_another_alone() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &opts()).await;
    let mut c = m.client().await;
    let nodes = [
        ("n1", serde_json::json!({})),
        ("n2", serde_json::json!({})),
        ("n3", serde_json::json!({})),
    ];
    let _fleet = fleet(&m.addr, &nodes).await;

    // Apply: six replicas, bound two per node (spread), all ready.
    create(&mut c, &service("web", 6, serde_json::json!({}))).await;
    create(&mut c, &service("db", 2, serde_json::json!({}))).await;
    let web = wait_ready(&mut c, "web", 6).await;
    assert!(
        per_node(&web).values().all(|n| *n == 2),
        "{:?}",
        per_node(&web)
    );
    let db = wait_ready(&mut c, "db", 2).await;
    let db_versions: BTreeMap<String, u64> = db
        .iter()
        .map(|r| (r.metadata.name.clone(), r.resource_version()))
        .collect();

    // Scale up, then down: the oldest replicas stay.
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["replicas"] = 9.into()
    })
    .await;
    let web9 = wait_ready(&mut c, "web", 9).await;
    assert!(
        per_node(&web9).values().all(|n| *n == 3),
        "{:?}",
        per_node(&web9)
    );
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["replicas"] = 4.into()
    })
    .await;
    let web4 = wait_ready(&mut c, "web", 4).await;
    let mut by_age: Vec<&Object> = web9.iter().collect();
    by_age.sort_by_key(|r| r.metadata.creation_timestamp.clone());
    let oldest: BTreeSet<String> = by_age[..4]
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();
    let kept: BTreeSet<String> = web4.iter().map(|r| r.metadata.name.clone()).collect();
    assert_eq!(kept, oldest, "scale-down removes the newest");

    // The other service was untouched: same names, same versions.
    let all = list(&mut c, Kind::Replica).await;
    let after: BTreeMap<String, u64> = replicas_of(&all, "db")
        .iter()
        .map(|r| (r.metadata.name.clone(), r.resource_version()))
        .collect();
    assert_eq!(after, db_versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unschedulable_replicas_explain_why_and_selectors_and_cordons_are_respected() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &opts()).await;
    let mut c = m.client().await;
    let nodes = [
        ("n1", serde_json::json!({"disk": "ssd"})),
        ("n2", serde_json::json!({})),
        ("n3", serde_json::json!({})),
    ];
    let fleet = fleet(&m.addr, &nodes).await;
    // n3 is down (never heartbeats, marked not ready) and n2 is cordoned.
    fleet.alive.lock().unwrap().remove("n3");
    modify(&mut c, Kind::Node, "n3", |n| {
        n.status["ready"] = false.into()
    })
    .await;
    modify(&mut c, Kind::Node, "n2", |n| {
        n.spec["unschedulable"] = true.into()
    })
    .await;

    // Too big for any node: the message counts each node's first failing filter.
    let mut big = service("big", 1, serde_json::json!({}));
    big.spec["template"]["resources"]["requests"]["memory"] = "4Gi".into();
    create(&mut c, &big).await;
    let msg = unschedulable_message(&mut c, "big").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 insufficient memory, 1 not ready, 1 unschedulable"
    );

    // A selector only n1 matches; every replica lands there, none on the cordoned n2.
    create(
        &mut c,
        &service(
            "fast",
            3,
            serde_json::json!({"nodeSelector": {"disk": "ssd"}}),
        ),
    )
    .await;
    let fast = wait_ready(&mut c, "fast", 3).await;
    assert_eq!(per_node(&fast), BTreeMap::from([("n1".to_string(), 3)]));
    create(&mut c, &service("any", 2, serde_json::json!({}))).await;
    let any = wait_ready(&mut c, "any", 2).await;
    assert_eq!(per_node(&any), BTreeMap::from([("n1".to_string(), 2)]));

    // One FailedScheduling event, not one per pass.
    let events = list(&mut c, Kind::Event).await;
    let failed = events
        .iter()
        .filter(|e| e.spec["reason"] == "FailedScheduling")
        .count();
    assert_eq!(failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn template_change_rolls_within_surge_and_deleting_the_service_deletes_replicas() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &opts()).await;
    let mut c = m.client().await;
    let nodes = [("n1", serde_json::json!({})), ("n2", serde_json::json!({}))];
    let _fleet = fleet(&m.addr, &nodes).await;
    create(&mut c, &service("web", 4, serde_json::json!({}))).await;
    let v1 = wait_ready(&mut c, "web", 4).await;
    let old_hash = v1[0].spec_as::<ReplicaSpec>().unwrap().template_hash;

    // Roll to a new image: never more than 4 + 1 replicas, never fewer than 4 ready.
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["template"]["image"] = "app:2".into()
    })
    .await;
    let seen = Arc::new(Mutex::new((0usize, usize::MAX)));
    wait_for("the rollout to finish", || {
        let mut c = c.clone();
        let seen = seen.clone();
        let old_hash = old_hash.clone();
        async move {
            let all = list(&mut c, Kind::Replica).await;
            let mine = replicas_of(&all, "web");
            let ready = mine
                .iter()
                .filter(|r| r.status_as::<ReplicaStatus>().unwrap().ready)
                .count();
            {
                let mut s = seen.lock().unwrap();
                s.0 = s.0.max(mine.len());
                s.1 = s.1.min(ready);
            }
            let done = mine.len() == 4
                && ready == 4
                && mine
                    .iter()
                    .all(|r| r.spec_as::<ReplicaSpec>().unwrap().template_hash != old_hash);
            done.then_some(())
        }
    })
    .await;
    let (max_total, min_ready) = *seen.lock().unwrap();
    assert!(max_total <= 5, "surge exceeded: {max_total}");
    assert!(min_ready >= 4, "availability dropped to {min_ready}");

    // Deleting the service deletes its replicas.
    c.delete(DeleteRequest {
        kind: "Service".into(),
        name: "web".into(),
        expected_resource_version: 0,
    })
    .await
    .expect("delete");
    wait_for("replicas to be gone", || {
        let mut c = c.clone();
        async move { list(&mut c, Kind::Replica).await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_node_goes_not_ready_and_its_replicas_run_elsewhere() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &opts()).await;
    let mut c = m.client().await;
    let nodes = [("n1", serde_json::json!({})), ("n2", serde_json::json!({}))];
    let fleet = fleet(&m.addr, &nodes).await;
    create(&mut c, &service("web", 4, serde_json::json!({}))).await;
    wait_ready(&mut c, "web", 4).await;

    // n2 stops heartbeating: NotReady after the lease, replicas on n1 after the grace.
    let t0 = std::time::Instant::now();
    fleet.alive.lock().unwrap().remove("n2");
    wait_for("n2 not ready", || {
        let mut c = c.clone();
        async move {
            let n = get(&mut c, Kind::Node, "n2").await?;
            let st: NodeStatus = n.status_as().unwrap();
            (!st.ready && st.reason.as_deref() == Some("NodeStatusUnknown")).then_some(())
        }
    })
    .await;
    let moved = wait_for("replicas to move to n1", || {
        let mut c = c.clone();
        async move {
            let all = list(&mut c, Kind::Replica).await;
            let mine: Vec<Object> = replicas_of(&all, "web").into_iter().cloned().collect();
            let ok = mine.len() == 4
                && mine.iter().all(|r| {
                    r.spec_as::<ReplicaSpec>().unwrap().node_name.as_deref() == Some("n1")
                        && r.status_as::<ReplicaStatus>().unwrap().ready
                });
            ok.then_some(mine)
        }
    })
    .await;
    assert_eq!(moved.len(), 4);
    // How fast is a benchmark's business (bench/cluster.sh); here only that it happens.
    eprintln!(
        "replicas moved {:?} after the node went silent",
        t0.elapsed()
    );
    let events = list(&mut c, Kind::Event).await;
    assert!(events.iter().any(|e| e.spec["reason"] == "NodeLost"));

    // Heard from again: ready.
    fleet.alive.lock().unwrap().insert("n2".into());
    wait_for("n2 ready again", || {
        let mut c = c.clone();
        async move {
            let n = get(&mut c, Kind::Node, "n2").await?;
            n.status_as::<NodeStatus>().unwrap().ready.then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_resume_on_a_new_leader_without_duplicate_replicas() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster(root.path(), &opts()).await;
    let leader = leader_index(&members).await;
    let other = (leader + 1) % 3;
    let nodes = [("n1", serde_json::json!({})), ("n2", serde_json::json!({}))];
    let _fleet = fleet(&members[other].addr, &nodes).await;
    let mut c = members[other].client().await;
    create(&mut c, &service("web", 4, serde_json::json!({}))).await;
    let before: BTreeSet<String> = wait_ready(&mut c, "web", 4)
        .await
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();

    // Kill the leader; the new one scales the service without duplicating replicas.
    let mut old = members.remove(leader);
    old.stop().await;
    let _new = leader_index(&members).await;
    let mut c = members[0].client().await;
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["replicas"] = 6.into()
    })
    .await;
    let after = wait_ready(&mut c, "web", 6).await;
    let names: BTreeSet<String> = after.iter().map(|r| r.metadata.name.clone()).collect();
    assert!(before.is_subset(&names), "the old replicas are kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_and_network_controllers_do_not_clobber_each_others_status_fields() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &opts()).await;
    let mut c = m.client().await;
    let nodes = [("n1", serde_json::json!({})), ("n2", serde_json::json!({}))];
    let _fleet = fleet(&m.addr, &nodes).await;

    // "api" publishes node port 30080; "web" (younger, declaring it too) gets a clusterIP and
    // a networkError from the network controller while the service controller rewrites its
    // replica counts again and again as the fake agent marks replicas ready.
    let ports = serde_json::json!({"ports": [{"port": 80, "nodePort": 30080}]});
    create(&mut c, &service("api", 0, ports.clone())).await;
    cluster_ip(&mut c, "api").await;
    create(&mut c, &service("web", 4, ports)).await;
    let first = cluster_ip(&mut c, "web").await;
    wait_ready(&mut c, "web", 4).await;

    // Both sets of fields are there at the end, the address unchanged throughout.
    let st: ServiceStatus = get(&mut c, Kind::Service, "web")
        .await
        .unwrap()
        .status_as()
        .unwrap();
    assert_eq!((st.ready_replicas, st.replicas), (4, 4));
    assert_eq!(st.cluster_ip.as_deref(), Some(first.as_str()));
    assert_eq!(
        st.network_error.as_deref(),
        Some("nodePort 30080/TCP is already published by service \"api\"")
    );

    // A scale-down makes the service controller write again: the address stays.
    modify(&mut c, Kind::Service, "web", |s| {
        s.spec["replicas"] = 2.into()
    })
    .await;
    wait_ready(&mut c, "web", 2).await;
    let st: ServiceStatus = get(&mut c, Kind::Service, "web")
        .await
        .unwrap()
        .status_as()
        .unwrap();
    assert_eq!(st.cluster_ip.as_deref(), Some(first.as_str()));
    assert!(st.network_error.is_some());

    // Every stored version of web since it got its address still has it (and, once reported,
    // the error): neither controller ever wrote over the other's fields, not even for a
    // moment that the network controller would then repair.
    let (history, _) = m.handle.store.watch(0).expect("history");
    let (mut had_ip, mut had_error, mut later_writes) = (false, false, 0);
    for change in history
        .iter()
        .filter(|ch| ch.object.kind == "Service" && ch.object.name == "web")
    {
        let o = Object::from_json(change.object.json.as_bytes()).unwrap();
        let st: ServiceStatus = o.status_as().unwrap();
        if had_ip {
            assert_eq!(
                st.cluster_ip.as_deref(),
                Some(first.as_str()),
                "revision {}",
                change.revision
            );
            later_writes += 1;
        }
        if had_error {
            assert!(st.network_error.is_some(), "revision {}", change.revision);
        }
        had_ip |= st.cluster_ip.is_some();
        had_error |= st.network_error.is_some();
    }
    assert!(
        later_writes >= 3,
        "the service controller wrote web's status after its address: {later_writes} writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_writes_check_each_object_alone_through_raft() {
    use gantry_control_plane::controllers::writer::{Outcome, Writer};
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let m = one_member(root.path(), &Options::default()).await;
    let writer = Writer::new(m.handle.raft.clone(), Duration::from_secs(5));

    // Create three services in one entry; one of them twice, which only that item refuses.
    let objs: Vec<Object> = ["a", "b", "c", "a"]
        .iter()
        .map(|n| service(n, 1, serde_json::json!({})))
        .collect();
    let out = writer.create_many(&objs).await;
    let written: Vec<bool> = out.iter().map(Outcome::is_written).collect();
    assert_eq!(written, vec![true, true, true, false]);
    assert!(matches!(out[3], Outcome::Conflict));

    // Update all three, one of them at a stale version: only it conflicts, and the others
    // get consecutive revisions.
    let mut current: Vec<Object> = out[..3]
        .iter()
        .map(|o| match o {
            Outcome::Written(s) => Object::from_json(s.json.as_bytes()).unwrap(),
            other => panic!("not written: {other:?}"),
        })
        .collect();
    current[1].metadata.resource_version = Some("1".into());
    let out = writer.update_many(&current).await;
    let versions: Vec<Option<u64>> = out
        .iter()
        .map(|o| match o {
            Outcome::Written(s) => Some(s.resource_version),
            _ => None,
        })
        .collect();
    assert!(matches!(out[1], Outcome::Conflict), "{out:?}");
    let (first, last) = (versions[0].unwrap(), versions[2].unwrap());
    assert_eq!(last, first + 1);
    let mut c = m.client().await;
    let stored = get(&mut c, Kind::Service, "c").await.unwrap();
    assert_eq!(stored.resource_version(), last);
}

/// Figures, not a test: binds per second end to end (one in-process member, CAS writes
/// through Raft) for 10,000 replicas on 1,000 nodes. Run through `bench/scheduler.sh`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "figures: run explicitly with --ignored --nocapture"]
async fn scheduler_end_to_end_figures() {
    use futures::StreamExt;
    init_tracing();
    use gantry_control_plane::controllers::SchedulerTask;
    let root = tempfile::tempdir().unwrap();
    let opts = Options {
        leader_tasks: Vec::new(),
        ..Options::default()
    };
    let m = one_member(root.path(), &opts).await;
    let c = m.client().await;
    let mut objects = Vec::new();
    for i in 0..1000 {
        let mut o = Object::new(Kind::Node, format!("node-{i:04}"));
        o.spec = serde_json::json!({"capacity": {"cpu": "64", "memory": "256Gi", "replicas": 110},
            "replicaCidr": format!("10.{}.{}.0/24", 100 + i / 256, i % 256)});
        o.status = serde_json::json!({"ready": true});
        objects.push(o);
    }
    for i in 0..10_000 {
        let mut o = Object::new(Kind::Replica, format!("svc{}-{i:05}", i % 100));
        o.spec = serde_json::json!({"service": format!("svc{}", i % 100),
            "template": {"image": "a", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
            "templateHash": "h"});
        objects.push(o);
    }
    let t = std::time::Instant::now();
    futures::stream::iter(objects)
        .map(|o| {
            let mut c = c.clone();
            async move { create(&mut c, &o).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    println!("loaded 11000 objects in {:?}", t.elapsed());

    // Start the scheduler alone on the loaded store and time the binds.
    let cfg = ControllerConfig::default();
    let task = SchedulerTask::new(cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let ctx = gantry_control_plane::server::LeaderContext {
        raft: m.handle.raft.clone(),
        store: m.handle.store.clone(),
        member: "s1".into(),
    };
    use gantry_control_plane::server::LeaderTask;
    let t = std::time::Instant::now();
    let h = tokio::spawn(task.run(ctx, stop.clone()));
    let store = m.handle.store.clone();
    loop {
        let (items, _) = store.list("Replica").unwrap();
        let bound = items
            .iter()
            .filter(|o| o.json.contains("\"nodeName\""))
            .count();
        if bound == 10_000 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "only {bound} bound");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = t.elapsed();
    println!(
        "end to end: 10000 replicas bound on 1000 nodes in {e:?}: {:.0} binds/s",
        10_000.0 / e.as_secs_f64()
    );
    stop.cancel();
    let _ = h.await;
}
