//! Three real members in-process over loopback gRPC.

mod common;

use common::*;
use gantry_api::proto::{self, Consistency, DeleteRequest, GetRequest, ListRequest, UpdateRequest};
use gantry_control_plane::raft::service::TimeoutNow;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_elect_a_leader_and_followers_forward_writes() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let members = cluster(root.path(), &Options::default()).await;

    // Exactly one leader, and every member agrees on it.
    let leader = leader_index(&members).await;
    let follower = (leader + 1) % 3;
    assert_eq!(members.iter().filter(|m| m.is_leader()).count(), 1);

    // A write sent to a follower is forwarded and committed.
    let mut c = members[follower].client().await;
    let written = create_node(&mut c, "n1").await;
    let obj = written.object.unwrap();
    assert_eq!(obj.resource_version, written.revision);
    let doc: serde_json::Value = serde_json::from_slice(&obj.json).unwrap();
    assert_eq!(
        doc["metadata"]["resourceVersion"],
        written.revision.to_string()
    );
    assert!(doc["metadata"]["creationTimestamp"].is_string());

    // A linearizable read on another follower sees it at once.
    let other = (leader + 2) % 3;
    let got = members[other]
        .client()
        .await
        .get(GetRequest {
            kind: "Node".into(),
            name: "n1".into(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.object.unwrap().resource_version, written.revision);

    // Every member applies it (stale reads converge).
    for m in &members {
        let mut c = m.client().await;
        wait_for("replication", || {
            let mut c = c.clone();
            async move { get_stale(&mut c, "n1").await }
        })
        .await;
        let _ = &mut c;
    }
    let list = c
        .list(ListRequest {
            kind: "node".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1);
    assert!(list.revision >= written.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_conflict_is_rejected_with_the_current_version() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let members = cluster(root.path(), &Options::default()).await;
    let mut c = members[1].client().await;
    let first = create_node(&mut c, "n1").await;

    // A second create of the same name is refused.
    let err = c
        .create(proto::CreateRequest {
            object: Some(proto::Object {
                kind: "Node".into(),
                name: "n1".into(),
                resource_version: 0,
                json: node_json("n1", serde_json::json!({})),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    // An update at the read version succeeds; a second one at the same (now stale) version
    // is refused, naming the current version.
    let update = |rv: u64, n: i64| proto::UpdateRequest {
        object: Some(proto::Object {
            kind: "Node".into(),
            name: "n1".into(),
            resource_version: rv,
            json: node_json("n1", serde_json::json!({ "n": n })),
        }),
    };
    let second = c
        .update(update(first.revision, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(second.revision > first.revision);
    let err = c.update(update(first.revision, 3)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        err.message()
            .contains(&format!("current {}", second.revision)),
        "{}",
        err.message()
    );

    // The creation timestamp survives updates.
    let doc = |o: &proto::Object| serde_json::from_slice::<serde_json::Value>(&o.json).unwrap();
    assert_eq!(
        doc(first.object.as_ref().unwrap())["metadata"]["creationTimestamp"],
        doc(second.object.as_ref().unwrap())["metadata"]["creationTimestamp"]
    );

    // Conditional delete: stale version refused, current accepted.
    let del = |rv| DeleteRequest {
        kind: "Node".into(),
        name: "n1".into(),
        expected_resource_version: rv,
    };
    assert_eq!(
        c.delete(del(first.revision)).await.unwrap_err().code(),
        tonic::Code::Aborted
    );
    c.delete(del(second.revision)).await.unwrap();
    assert_eq!(
        c.delete(del(0)).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Invalid objects are refused with the field named, nothing written.
    let err = c
        .create(proto::CreateRequest {
            object: Some(proto::Object {
                kind: "Node".into(),
                name: "Bad_Name".into(),
                resource_version: 0,
                json: node_json("Bad_Name", serde_json::json!({})),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("metadata.name"), "{}", err.message());
    let err = c.update(update(0, 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let _ = UpdateRequest::default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_without_quorum_fails_within_the_deadline() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options {
        request_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let mut members = cluster(root.path(), &opts).await;
    let leader = leader_index(&members).await;
    let mut c = members[leader].client().await;
    create_node(&mut c, "before").await;

    // Two of three members down: no quorum.
    for (i, m) in members.iter_mut().enumerate() {
        if i != leader {
            m.stop().await;
        }
    }
    let started = Instant::now();
    let mut c = members[leader].client().await;
    let err = c
        .create(proto::CreateRequest {
            object: Some(proto::Object {
                kind: "Node".into(),
                name: "after".into(),
                resource_version: 0,
                json: node_json("after", serde_json::json!({})),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_leader_hands_leadership_to_a_follower_that_would_never_campaign_alone() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut members = cluster(root.path(), &Options::default()).await;
    let leader = leader_index(&members).await;
    let term = members[leader].handle.raft.metrics().borrow().current_term;
    // Followers never start an election by themselves here: only the handover's TimeoutNow
    // (which openraft's switch does not block) can give the cluster a new leader.
    for (i, m) in members.iter().enumerate() {
        if i != leader {
            m.handle.raft.runtime_config().elect(false);
        }
    }
    let follower = (leader + 1) % 3;
    let mut c = members[follower].client().await;
    create_node(&mut c, "before").await;

    // Only the leader a member follows may make it campaign.
    let forged = openraft::Vote::new_committed(term + 5, members[follower].handle.identity.id);
    let mut raft_client = gantry_api::proto::raft_service_client::RaftServiceClient::connect(
        format!("http://{}", members[follower].addr),
    )
    .await
    .unwrap();
    let err = raft_client
        .timeout_now(proto::RaftRequest {
            cluster_id: members[follower].handle.identity.cluster_id.clone(),
            data: serde_json::to_vec(&TimeoutNow { vote: forged }).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("timeout-now refused"),
        "{}",
        err.message()
    );
    assert!(members[leader].is_leader());

    // Writers keep writing through a follower while the leader stops.
    let stop_writing = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut c = c.clone();
            let stop = stop_writing.clone();
            tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0);
                for i in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let name = format!("w{w}-{i}");
                    let r = c
                        .create(proto::CreateRequest {
                            object: Some(proto::Object {
                                kind: "Node".into(),
                                name: name.clone(),
                                resource_version: 0,
                                json: node_json(&name, serde_json::json!({})),
                            }),
                        })
                        .await;
                    match r {
                        Ok(_) => acked.push(name),
                        Err(e) => {
                            assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
                            eprintln!("FAILED {name}: {}", e.message());
                            failed += 1;
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    wait_for("writes to flow", || async {
        let m = members[leader].handle.raft.metrics().borrow().clone();
        (m.last_applied.map(|l| l.index).unwrap_or(0) > 20).then_some(())
    })
    .await;

    members[leader].stop().await;
    let successor = wait_for("a new leader", || async {
        members
            .iter()
            .enumerate()
            .position(|(i, m)| i != leader && m.is_leader())
    })
    .await;
    let new_term = members[successor]
        .handle
        .raft
        .metrics()
        .borrow()
        .current_term;
    assert_eq!(new_term, term + 1, "one election, won at once");

    // Writes go on under the new leader, and none acknowledged was lost.
    let mut c = members[3 - leader - successor].client().await;
    create_node(&mut c, "after").await;
    stop_writing.cancel();
    let (mut acked, mut failed) = (Vec::new(), 0);
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    eprintln!(
        "{} writes acknowledged, {failed} failed during the handover",
        acked.len()
    );
    assert!(!acked.is_empty());
    for name in acked.iter().chain([&"before".to_string()]) {
        let got = c
            .get(GetRequest {
                kind: "Node".into(),
                name: name.clone(),
                consistency: Consistency::Linearizable as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.object.is_some(), "acknowledged {name} lost");
    }
}

async fn next_event(stream: &mut tonic::Streaming<proto::WatchEvent>) -> proto::WatchEvent {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_from_a_revision_and_compacted_revisions_say_list_again() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options {
        history: 8,
        ..Options::default()
    };
    let members = cluster(root.path(), &opts).await;
    let mut c = members[0].client().await;

    // List (empty), then watch from the list's revision on a follower.
    let list = c
        .list(ListRequest {
            kind: "Node".into(),
            consistency: 0,
        })
        .await
        .unwrap();
    let rev0 = list.into_inner().revision;
    let mut w = members[2]
        .client()
        .await
        .watch(proto::WatchRequest {
            kind: "Node".into(),
            from_revision: rev0,
        })
        .await
        .unwrap()
        .into_inner();
    let a = create_node(&mut c, "a").await;
    let b = create_node(&mut c, "b").await;
    let e1 = next_event(&mut w).await;
    assert_eq!(e1.r#type, proto::EventType::Added as i32);
    assert_eq!(
        (e1.object.unwrap().name, e1.revision),
        ("a".to_string(), a.revision)
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(e2.revision, b.revision);
    drop(w);

    // Resume after the first event: the second is replayed from history, then a delete.
    let mut w = c
        .watch(proto::WatchRequest {
            kind: "Node".into(),
            from_revision: a.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut w).await.revision, b.revision);
    let del = c
        .delete(DeleteRequest {
            kind: "Node".into(),
            name: "a".into(),
            expected_resource_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let e = next_event(&mut w).await;
    assert_eq!(e.r#type, proto::EventType::Deleted as i32);
    assert_eq!(e.revision, del.revision);
    drop(w);

    // Enough writes to push the first revisions out of the bounded history.
    for i in 0..20 {
        create_node(&mut c, &format!("x{i}")).await;
    }
    let err = c
        .watch(proto::WatchRequest {
            kind: "Node".into(),
            from_revision: rev0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(
        err.message()
            .contains(&format!("revision {rev0} compacted, list again")),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_down_during_compaction_catches_up_by_snapshot() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut tuning = tuning();
    tuning.snapshot_every = 10;
    tuning.keep_logs = 0;
    let opts = Options {
        tuning,
        ..Options::default()
    };
    let mut members = cluster(root.path(), &opts).await;
    let leader = leader_index(&members).await;
    // Stop a follower and drop every handle on its store (sled locks its directory).
    let mut down = members.remove((leader + 1) % 3);
    let (name, dir, addr) = (down.name.clone(), down.dir.clone(), down.addr.clone());
    down.stop().await;
    drop(down);
    let leader = leader_index(&members).await;

    // Writes while it is down; snapshots are built and the log is purged behind them.
    let mut c = members[leader].client().await;
    for i in 0..40 {
        create_node(&mut c, &format!("n{i}")).await;
    }
    wait_for("log purge on the leader", || async {
        let m = members[leader].handle.raft.metrics().borrow().clone();
        (m.purged.map(|p| p.index).unwrap_or(0) > 20).then_some(())
    })
    .await;

    // Restarted, it cannot be sent the purged entries: it must install a snapshot.
    let back = start(
        &name,
        dir,
        Some(&addr),
        gantry_control_plane::server::Bootstrap::Restart,
        &opts,
    )
    .await
    .expect("restart");
    let mut bc = back.client().await;
    wait_for("the lagging member to have every object", || {
        let mut bc = bc.clone();
        async move {
            let list = bc
                .list(ListRequest {
                    kind: "Node".into(),
                    consistency: Consistency::Stale as i32,
                })
                .await
                .ok()?
                .into_inner();
            (list.items.len() == 40).then_some(())
        }
    })
    .await;
    let m = back.handle.raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "the member installed a snapshot");
    let _ = &mut bc;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_of_all_members_keeps_every_acknowledged_write() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let mut members = cluster(root.path(), &opts).await;
    let mut c = members[1].client().await;
    let mut acked = Vec::new();
    for i in 0..25 {
        acked.push((
            format!("n{i}"),
            create_node(&mut c, &format!("n{i}")).await.revision,
        ));
    }
    let saved: Vec<_> = members
        .iter()
        .map(|m| (m.name.clone(), m.dir.clone(), m.addr.clone()))
        .collect();
    for m in &mut members {
        m.stop().await;
    }
    drop(members);

    // All three come back from their sled directories only.
    let mut back = Vec::new();
    for (name, dir, addr) in saved {
        let b = gantry_control_plane::server::Bootstrap::Restart;
        back.push(
            start(&name, dir, Some(&addr), b, &opts)
                .await
                .expect("restart"),
        );
    }
    leader_index(&back).await;
    let mut c = back[2].client().await;
    for (name, rev) in acked {
        let got = wait_for("a linearizable read after restart", || {
            let mut c = c.clone();
            let name = name.clone();
            async move {
                c.get(GetRequest {
                    kind: "Node".into(),
                    name,
                    consistency: 0,
                })
                .await
                .ok()
            }
        })
        .await
        .into_inner();
        assert_eq!(got.object.unwrap().resource_version, rev);
    }
    // And the cluster still takes writes.
    create_node(&mut c, "after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_can_be_added_and_removed() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let members = cluster(root.path(), &opts).await;
    let mut c = members[2].client().await;
    create_node(&mut c, "n1").await;

    // A fourth member joins through a follower and receives the data.
    let s4 = join("s4", root.path(), &members[2].addr, &opts)
        .await
        .expect("s4");
    wait_for_voters(&members[0].addr, 4).await;
    let mut c4 = s4.client().await;
    wait_for("s4 to apply", || {
        let mut c4 = c4.clone();
        async move { get_stale(&mut c4, "n1").await }
    })
    .await;
    let listed = c4
        .members(proto::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members.len(), 4);
    assert_eq!(listed.members.iter().filter(|m| m.leader).count(), 1);
    assert!(listed.members.iter().all(|m| m.term > 0));

    // A name already taken by another member is refused.
    let err = c
        .add_member(proto::AddMemberRequest {
            id: 12345,
            name: "s4".into(),
            addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{}", err.message());

    // Removing it leaves three voters and a working cluster.
    c.remove_member(proto::RemoveMemberRequest { name: "s4".into() })
        .await
        .unwrap();
    wait_for_voters(&members[0].addr, 3).await;
    let listed = c
        .members(proto::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.members.iter().all(|m| m.name != "s4"));
    create_node(&mut c, "n2").await;
    let err = c
        .remove_member(proto::RemoveMemberRequest {
            name: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop(s4);
}

/// Raft takes one membership change at a time. Changes asked at once, and changes asked of a
/// follower right after the previous one (its commit index lags), must wait their turn on the
/// leader instead of failing with "already undergoing a configuration change".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_asked_at_once_through_followers_all_take_effect() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let members = cluster(root.path(), &opts).await;

    // Two members join at the same moment, one through each follower.
    let (s4, s5) = tokio::join!(
        join("s4", root.path(), &members[1].addr, &opts),
        join("s5", root.path(), &members[2].addr, &opts),
    );
    let (s4, s5) = (s4.expect("s4 joins"), s5.expect("s5 joins"));
    wait_for_voters(&members[0].addr, 5).await;

    // Both leave at the same moment, each removed through a different follower, at once
    // after the joins.
    let leader = leader_index(&members).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut a = members[followers[0]].client().await;
    let mut b = members[followers[1]].client().await;
    let (ra, rb) = tokio::join!(
        a.remove_member(proto::RemoveMemberRequest { name: "s4".into() }),
        b.remove_member(proto::RemoveMemberRequest { name: "s5".into() }),
    );
    ra.expect("s4 removed");
    rb.expect("s5 removed");
    wait_for_voters(&members[0].addr, 3).await;
    let listed = a
        .members(proto::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: BTreeSet<&str> = listed.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["s1", "s2", "s3"]));
    create_node(&mut a, "after-changes").await;
    drop((s4, s5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_join_address_and_foreign_data_dir_are_refused_clearly() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let a = start(
        "a1",
        root.path().join("a1"),
        None,
        gantry_control_plane::server::Bootstrap::Init,
        &opts,
    )
    .await
    .unwrap();
    let b = start(
        "b1",
        root.path().join("b1"),
        None,
        gantry_control_plane::server::Bootstrap::Init,
        &opts,
    )
    .await
    .unwrap();

    // Nothing listens there.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = unused.local_addr().unwrap().to_string();
    drop(unused);
    let err = join("c1", root.path(), &dead, &opts)
        .await
        .err()
        .expect("join to nothing fails");
    assert!(
        err.to_string().starts_with(&format!("join {dead}:")),
        "{err}"
    );

    // A data dir of cluster A cannot join cluster B.
    let mut a = a;
    let dir = a.dir.clone();
    a.stop().await;
    let err = start(
        "a1",
        dir,
        None,
        gantry_control_plane::server::Bootstrap::Join(b.addr.clone()),
        &opts,
    )
    .await
    .err()
    .expect("foreign data dir refused");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");

    // An empty data dir without --init or --join is refused.
    let err = start(
        "d1",
        root.path().join("d1"),
        None,
        gantry_control_plane::server::Bootstrap::Restart,
        &opts,
    )
    .await
    .err()
    .expect("empty dir refused");
    assert!(err.to_string().contains("--init"), "{err}");
}
