//! SIGKILL of the leader of a three-process cluster during writes loses no acknowledged write.
//!
//! The members are real processes: this test binary re-executes itself with
//! `GANTRY_TEST_MEMBER` set, and `member_process` then runs one member until killed.

mod common;

use common::procs::*;
use common::*;
use gantry_api::proto::{self, GetRequest};
use std::time::{Duration, Instant};

/// Entry point of a member process; a no-op in a normal test run.
#[test]
fn member_process() {
    common::procs::member_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_during_writes_loses_no_acknowledged_write() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();

    // Phase 1: a three-process cluster.
    let mut procs = spawn_three(root.path(), &addrs).await;

    // Phase 2: writes through every member; the leader is killed in the middle.
    let leader_addr = leader_addr(&addrs[0]).await;
    let mut clients = Vec::new();
    for a in &addrs {
        clients.push(try_client(a).await.unwrap());
    }
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut killed_at: Option<Instant> = None;
    let mut failover: Option<Duration> = None;
    let mut i = 0u64;
    let start = Instant::now();
    while failover.is_none() || acked.len() < 60 {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "writes stalled after the kill"
        );
        if killed_at.is_none() && acked.len() >= 30 {
            let p = procs.iter_mut().find(|p| p.addr == leader_addr).unwrap();
            p.kill9();
            killed_at = Some(Instant::now());
        }
        let name = format!("n{i}");
        let target = (i as usize) % 3;
        i += 1;
        if killed_at.is_some() && addrs[target] == leader_addr {
            continue;
        }
        let req = proto::CreateRequest {
            object: Some(proto::Object {
                kind: "Node".into(),
                name: name.clone(),
                resource_version: 0,
                json: node_json(&name, serde_json::json!({})),
            }),
        };
        if let Ok(r) = clients[target].create(req).await {
            acked.push((name, r.into_inner().revision));
            if let (Some(k), None) = (killed_at, failover) {
                failover = Some(k.elapsed());
            }
        } else if killed_at.is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "failover: first write accepted {:?} after SIGKILL of the leader",
        failover.unwrap()
    );

    // Phase 3: the killed member restarts from its directory; every acknowledged write is
    // present on every member.
    let killed = procs.iter().position(|p| p.addr == leader_addr).unwrap();
    let name = procs[killed].name.clone();
    procs[killed] = Proc::spawn(&name, root.path(), &leader_addr, "restart");
    for a in &addrs {
        let c = try_client(a).await.unwrap();
        for (name, rev) in &acked {
            let got = wait_for("an acknowledged write", || {
                let mut c = c.clone();
                let name = name.clone();
                async move {
                    c.get(GetRequest {
                        kind: "Node".into(),
                        name,
                        consistency: proto::Consistency::Stale as i32,
                    })
                    .await
                    .ok()
                }
            })
            .await
            .into_inner();
            assert_eq!(got.object.unwrap().resource_version, *rev, "on {a}");
        }
    }
}
