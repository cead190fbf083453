//! `gantry cluster up` / `down` as scripts use them: back to back under one name.

use anyhow::Context;
use gantry_e2e::*;

/// The host-side veths `cluster.json` of `cluster` names.
fn veths_of(cluster: &TestCluster) -> Vec<String> {
    let state = cluster.state().expect("cluster.json");
    state["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["veth"].as_str().map(str::to_string))
        .collect()
}

/// The nodes `gantry get nodes` lists with STATUS exactly `Ready`.
fn ready_nodes(cluster: &TestCluster) -> Vec<String> {
    let out = cluster.gantry_ok(&["get", "nodes"]).expect("get nodes");
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?;
            (cols.next()? == "Ready").then(|| name.to_string())
        })
        .collect()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The kernel removes a deleted namespace's veth pairs later, asynchronously: `down` must
/// remove them itself, or an `up` of the same cluster right after finds their names taken.
#[test]
fn down_leaves_no_interface_behind_and_the_same_cluster_comes_straight_back_up() {
    let _one = serial();
    let mut cluster = TestCluster::up(1, 1).expect("cluster up");
    for round in 1..=4 {
        let veths = veths_of(&cluster);
        assert_eq!(veths.len(), 2, "one veth per member: {veths:?}");
        cluster.down().expect("cluster down");
        let left: Vec<&String> = veths.iter().filter(|v| link_exists(v)).collect();
        assert!(
            left.is_empty(),
            "round {round}: left behind by down: {left:?}"
        );
        cluster
            .bring_up(1, 1)
            .with_context(|| format!("round {round}: up right after down"))
            .unwrap();
        assert_eq!(ready_nodes(&cluster), ["n1"], "round {round}");
    }
}
