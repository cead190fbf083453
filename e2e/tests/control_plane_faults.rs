//! Faults of the control plane in a real local cluster: three `gantry server` processes, each
//! in its own network namespace, driven by `gantry cluster`.

use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::Consistency;
use gantry_e2e::{eventually, run_with_deadline, runtime, serial, TestCluster};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A service with no replicas: a real object the controllers leave alone but for its status.
fn service(name: &str) -> Object {
    let mut o = Object::new(Kind::Service, name);
    o.spec = serde_json::json!({"replicas": 0, "template": {"image": "gantry/sample:latest"}});
    o
}

#[test]
fn sigkill_of_the_leader_during_writes_loses_no_acknowledged_write() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    runtime().block_on(async {
        let leader = cluster.leader().await.unwrap();
        let mut client = cluster.client().await.unwrap();
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        let mut killed_at: Option<Instant> = None;
        let mut first_after_kill: Option<Duration> = None;
        let mut i = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < 150 {
            assert!(Instant::now() < deadline, "writes did not resume within 60 s");
            if i == 50 && killed_at.is_none() {
                cluster.member("kill", &leader).unwrap();
                killed_at = Some(Instant::now());
            }
            let name = format!("w{i}");
            match client.create(&service(&name)).await {
                Ok(o) => {
                    if let (Some(t), None) = (killed_at, first_after_kill) {
                        first_after_kill = Some(t.elapsed());
                    }
                    acked.insert(name, o.resource_version());
                    i += 1;
                }
                // The outcome of a write in flight when the leader died is unknown: it may
                // or may not exist afterwards, and a retry may find it already there.
                Err(ClientError::AlreadyExists(_)) => i += 1,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Ok(c) = cluster.client().await {
                        client = c;
                    }
                }
                Err(e) => panic!("write {name}: unexpected error {e}"),
            }
        }
        let (items, _) = client.list(Kind::Service).await.unwrap();
        let stored: BTreeMap<String, &Object> =
            items.iter().map(|o| (o.metadata.name.clone(), o)).collect();
        for (name, version) in &acked {
            let o = stored
                .get(name)
                .unwrap_or_else(|| panic!("acknowledged write {name} lost"));
            assert!(
                o.resource_version() >= *version,
                "{name}: stored version {} older than the acknowledged {version}",
                o.resource_version()
            );
        }
        let new_leader = cluster.leader().await.unwrap();
        assert_ne!(new_leader, leader, "the killed member cannot still lead");
        eprintln!(
            "figure: first write accepted {:?} after SIGKILL of leader {leader}; {} acknowledged writes, none lost",
            first_after_kill.unwrap(),
            acked.len()
        );
    });
}

/// The term the current leader reports.
async fn leader_term(cluster: &TestCluster) -> u64 {
    let mut c = cluster.client().await.unwrap();
    let m = c.members().await.unwrap();
    m.members.iter().find(|m| m.leader).map_or(0, |m| m.term)
}

#[test]
fn sigterm_of_the_leader_hands_leadership_to_a_follower_in_one_election() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    let rt = runtime();
    let (leader, term) = rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        c.create(&service("before")).await.unwrap();
        let leader = cluster.leader().await.unwrap();
        (leader, leader_term(&cluster).await)
    });
    // `cluster stop` sends SIGTERM and returns once the member has exited.
    cluster.member("stop", &leader).unwrap();
    let stopped = Instant::now();
    let log_path = cluster.dir().join("logs").join(format!("{leader}.log"));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("handed leadership over"),
        "{leader} did not hand over:\n{log}"
    );
    rt.block_on(async {
        let after = eventually(
            "a write after the stop",
            Duration::from_secs(15),
            || async {
                let mut c = cluster.client().await.ok()?;
                match c.create(&service("after")).await {
                    Ok(_) | Err(ClientError::AlreadyExists(_)) => Some(stopped.elapsed()),
                    Err(_) => None,
                }
            },
        )
        .await
        .unwrap();
        let new_leader = cluster.leader().await.unwrap();
        assert_ne!(new_leader, leader);
        assert_eq!(
            leader_term(&cluster).await,
            term + 1,
            "more than one election"
        );
        eprintln!(
            "figure: after SIGTERM of leader {leader} ({new_leader} leads), a write was \
             accepted {after:?} after the member exited"
        );
    });
}

#[test]
fn a_partitioned_leader_refuses_writes_while_the_majority_elects_and_serves() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    let rt = runtime();
    let leader = rt.block_on(cluster.leader()).unwrap();
    let leader_addr = cluster.server_addr(&leader).unwrap();
    rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        c.create(&service("before")).await.unwrap();
    });
    cluster.member("partition", &leader).unwrap();

    // The majority elects a new leader and accepts writes.
    rt.block_on(async {
        let others: Vec<String> = cluster
            .servers
            .iter()
            .filter(|a| **a != leader_addr)
            .cloned()
            .collect();
        eventually(
            "a write accepted by the majority",
            Duration::from_secs(15),
            || {
                let others = others.clone();
                async move {
                    let mut c = Client::connect(&others).await.ok()?;
                    match c.create(&service("majority")).await {
                        Ok(_) | Err(ClientError::AlreadyExists(_)) => Some(()),
                        Err(_) => None,
                    }
                }
            },
        )
        .await
        .unwrap();
    });

    // From inside its namespace the old leader is still reachable, and it refuses: a write
    // cannot commit without a quorum, and a linearizable read cannot be served either.
    let mut cmd = cluster.command_in(
        &leader,
        &[
            "--server",
            &leader_addr,
            "scale",
            "service",
            "before",
            "--replicas",
            "1",
        ],
    );
    cmd.env("GANTRY_CONFIG", "/nonexistent");
    let out = run_with_deadline(cmd, Duration::from_secs(30)).unwrap();
    assert!(
        !out.status.success(),
        "the minority side accepted a write: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quorum") || err.contains("leader") || err.contains("unavailable"),
        "unexpected refusal: {err}"
    );

    // Healing converges: the old leader catches up and serves the majority's write.
    cluster.member("heal", &leader).unwrap();
    rt.block_on(async {
        eventually(
            "the healed member to serve the majority's write",
            Duration::from_secs(15),
            || {
                let addr = leader_addr.clone();
                async move {
                    let mut c = Client::connect(&[addr]).await.ok()?;
                    c.get(Kind::Service, "majority").await.ok().flatten()
                }
            },
        )
        .await
        .unwrap();
    });
}

#[test]
fn stopping_and_starting_every_member_keeps_all_state() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    let rt = runtime();
    let before = rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        for i in 0..20 {
            c.create(&service(&format!("keep{i}"))).await.unwrap();
        }
        let (items, _) = c.list(Kind::Service).await.unwrap();
        items
            .into_iter()
            .map(|o| (o.metadata.name.clone(), o.spec))
            .collect::<BTreeMap<_, _>>()
    });
    assert_eq!(before.len(), 20);
    for s in ["s1", "s2", "s3"] {
        cluster.member("stop", s).unwrap();
    }
    for s in ["s1", "s2", "s3"] {
        cluster.member("start", s).unwrap();
    }
    let after = rt.block_on(async {
        let items = eventually(
            "the restarted cluster to answer a list",
            Duration::from_secs(20),
            || {
                let servers = cluster.servers.clone();
                async move {
                    let mut c = Client::connect(&servers).await.ok()?;
                    c.list(Kind::Service).await.ok().map(|(list, _)| list)
                }
            },
        )
        .await
        .unwrap();
        items
            .into_iter()
            .map(|o| (o.metadata.name.clone(), o.spec))
            .collect::<BTreeMap<_, _>>()
    });
    assert_eq!(after, before, "state changed across a full restart");
}

/// Mount points unmounted (lazily, so a member still using them cannot block it) when dropped.
struct Unmount(Vec<String>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
    }
}

/// The line a member printed when it exited with an error (`gantry: …`), once there is one.
async fn exit_reason(cluster: &TestCluster, member: &str, within: Duration) -> String {
    let log = cluster.dir().join(format!("logs/{member}.log"));
    eventually(&format!("{member} to exit with an error"), within, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .rev()
                .find(|l| l.starts_with("gantry:"))
                .map(str::to_string)
        }
    })
    .await
    .unwrap()
}

/// Runs `mount ARGS…`, failing the test when it fails.
fn mount(args: &[&str]) {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_member_whose_data_dir_is_read_only_fails_clearly_and_loses_nothing() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    let rt = runtime();
    rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        for i in 0..10 {
            c.create(&service(&format!("early{i}"))).await.unwrap();
        }
    });
    let s3 = cluster.server_addr("s3").unwrap();
    cluster.member("stop", "s3").unwrap();
    let data = cluster.dir().join("servers/s3");
    let data_arg = data.display().to_string();
    mount(&["--bind", &data_arg, &data_arg]);
    mount(&["-o", "remount,bind,ro", &data_arg]);
    let ro = Unmount(vec![data_arg.clone()]);

    // Started on a data dir it cannot write, the member stops with a clear reason.
    cluster.member("start", "s3").unwrap();
    let reason = rt.block_on(exit_reason(&cluster, "s3", Duration::from_secs(20)));
    assert!(
        reason.contains("Read-only file system") && reason.contains("s3"),
        "unclear failure: {reason}"
    );
    eprintln!("s3 refused to start: {reason}");

    // The majority keeps serving meanwhile.
    rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        for i in 0..10 {
            c.create(&service(&format!("late{i}"))).await.unwrap();
        }
    });

    // Writable again, the member starts and catches up with every acknowledged write.
    drop(ro);
    cluster.member("start", "s3").unwrap();
    let names = rt
        .block_on(eventually(
            "s3 to serve all 20 services",
            Duration::from_secs(20),
            || {
                let s3 = s3.clone();
                async move {
                    let mut c = Client::connect(&[s3]).await.ok()?;
                    let (items, _) = c.list(Kind::Service).await.ok()?;
                    (items.len() == 20).then_some(items)
                }
            },
        ))
        .unwrap();
    assert_eq!(names.len(), 20);
}

/// A service whose spec is padded to about 2 KB, to fill a disk quickly.
fn big_service(name: &str, pad: usize) -> Object {
    let mut o = service(name);
    o.spec["template"]["command"] = serde_json::json!([format!("{:0>1$}", pad, 2000)]);
    o
}

#[test]
fn a_member_whose_disk_fills_up_stops_with_a_clear_error_and_catches_up_once_it_has_room() {
    let _one = serial();
    let cluster = TestCluster::up(3, 0).expect("cluster up");
    let rt = runtime();
    cluster.member("stop", "s3").unwrap();
    // s3's data moves onto a 2 MiB tmpfs mounted over its data dir.
    let data = cluster.dir().join("servers/s3");
    let data_arg = data.display().to_string();
    let small = cluster.dir().join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let small_arg = small.display().to_string();
    mount(&["-t", "tmpfs", "-o", "size=2m", "tmpfs", &small_arg]);
    let _mounts = Unmount(vec![data_arg.clone(), small_arg.clone()]);
    let copied = std::process::Command::new("cp")
        .args(["-a", &format!("{data_arg}/."), &small_arg])
        .status()
        .unwrap();
    assert!(copied.success());
    mount(&["--bind", &small_arg, &data_arg]);
    cluster.member("start", "s3").unwrap();

    // The majority acknowledges ~4 MB of writes (2,000 services of ~2 KB); s3 runs out of
    // space on the way.
    let acked = rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        let mut acked = 0;
        for i in 0..2000 {
            c.create(&big_service(&format!("fill{i}"), i))
                .await
                .unwrap();
            acked += 1;
        }
        acked
    });
    let reason = rt.block_on(exit_reason(&cluster, "s3", Duration::from_secs(30)));
    assert!(
        reason.contains("member s3") && reason.contains("No space left on device"),
        "unclear failure: {reason}"
    );
    eprintln!("s3 stopped: {reason}");

    // The majority kept serving: every acknowledged write is there.
    let stored = rt.block_on(async {
        let mut c = cluster.client().await.unwrap();
        c.list(Kind::Service).await.unwrap().0.len()
    });
    assert_eq!(stored, acked);

    // Given room again, s3 restarts on its intact store and catches up with every acknowledged
    // write: about 3,600 log entries of ~2 KB, sent in batches it can take within a heartbeat.
    mount(&["-o", "remount,size=256m", &small_arg]);
    cluster.member("start", "s3").unwrap();
    let s3 = cluster.server_addr("s3").unwrap();
    let started = Instant::now();
    let caught_up = rt.block_on(eventually(
        "s3 to list every acknowledged write",
        Duration::from_secs(30),
        || {
            let s3 = s3.clone();
            async move {
                let mut c = Client::connect(&[s3]).await.ok()?;
                let (items, _) = c.list_with(Kind::Service, Consistency::Stale).await.ok()?;
                (items.len() == acked).then_some(())
            }
        },
    ));
    if let Err(e) = caught_up {
        let log = std::fs::read_to_string(cluster.dir().join("logs/s3.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{e:#}\ns3's log ends with:\n{}", tail.join("\n"));
    }
    eprintln!("s3 caught up in {:?}", started.elapsed());
}
