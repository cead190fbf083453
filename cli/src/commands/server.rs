//! `gantry server`: runs one control-plane member until SIGTERM or SIGINT.

use super::output::{finish, parse_positive_duration, user_error};
use anyhow::Context;
use clap::Args;
use gantry_api::net::Ipv4Cidr;
use gantry_control_plane::controllers::network::{
    DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX, DEFAULT_SERVICE_CIDR,
};
use gantry_control_plane::controllers::{default_controllers, ControllerConfig};
use gantry_control_plane::raft::{
    RaftTuning, DEFAULT_ELECTION_MAX_MS, DEFAULT_ELECTION_MIN_MS, DEFAULT_HEARTBEAT_MS,
};
use gantry_control_plane::server::{Bootstrap, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `gantry server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This member's name (a DNS-1123 label), unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// Directory of its Raft log, state and identity.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on for peers and clients.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// Address others reach this member at (default: the listening address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Start a new cluster with this member alone.
    #[arg(long, conflicts_with = "join")]
    pub init: bool,
    /// Join the cluster of the member at ADDR (any member).
    #[arg(long, value_name = "ADDR")]
    pub join: Option<String>,
    /// Raft heartbeat period in milliseconds.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout in milliseconds.
    #[arg(long, default_value_t = DEFAULT_ELECTION_MIN_MS)]
    pub election_min_ms: u64,
    /// Upper bound of the election timeout in milliseconds. A follower that heard from a
    /// leader campaigns after this (openraft's leader lease) plus its own timeout.
    #[arg(long, default_value_t = DEFAULT_ELECTION_MAX_MS)]
    pub election_max_ms: u64,
    /// Worker threads of the member's runtime; 1 (the default) runs everything on one
    /// thread, which is fastest when members share a few cores (fsyncs still run on their
    /// own threads).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Deadline of a write or linearizable read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// A node not heard from for this long is NotReady (`4s`, `500ms`).
    #[arg(long, default_value = "4s", value_parser = parse_positive_duration)]
    pub node_lease: Duration,
    /// After a further grace, a NotReady node's replicas are replaced elsewhere.
    #[arg(long, default_value = "4s", value_parser = parse_positive_duration)]
    pub node_grace: Duration,
    /// Controllers compare all desired and actual state at least this often.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub resync: Duration,
    /// The range every node's replica subnet is carved from.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: Ipv4Cidr,
    /// Prefix length of one node's replica subnet (24: 256 addresses per node).
    #[arg(long, value_name = "PREFIX", default_value_t = DEFAULT_NODE_PREFIX,
        value_parser = clap::value_parser!(u8).range(0..=32))]
    pub node_cidr_size: u8,
    /// The range services' virtual addresses (clusterIP) come from.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: Ipv4Cidr,
}

/// Runs the member; returns its exit code.
pub fn run(args: ServerArgs) -> anyhow::Result<i32> {
    let controllers = ControllerConfig {
        node_lease: args.node_lease,
        node_grace: args.node_grace,
        resync: args.resync,
        cluster_cidr: args.cluster_cidr,
        node_prefix: args.node_cidr_size,
        service_cidr: args.service_cidr,
        ..ControllerConfig::default()
    };
    // Refused before anything is bound or written: a cluster must not start handing out
    // addresses from ranges it cannot use.
    if let Err(e) = controllers.check_network() {
        return finish(Err(user_error(e.to_string())));
    }
    super::daemon::init_logging("info,openraft=error");
    let bootstrap = match (args.init, args.join.clone()) {
        (true, _) => Bootstrap::Init,
        (false, Some(addr)) => Bootstrap::Join(addr),
        (false, None) => Bootstrap::Restart,
    };
    let mut config = ServerConfig::new(args.name.clone(), args.data_dir.clone(), bootstrap);
    config.advertise = args.advertise.clone();
    config.raft = RaftTuning {
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        election_min: Duration::from_millis(args.election_min_ms),
        election_max: Duration::from_millis(args.election_max_ms),
        ..RaftTuning::default()
    };
    config.request_timeout = Duration::from_millis(args.request_timeout_ms);
    config.leader_tasks = default_controllers(controllers);
    let name = args.name.clone();
    let threads = super::daemon::Threads::Workers(usize::from(args.worker_threads));
    super::daemon::serve(&args.listen, threads, |listener, shutdown| async move {
        gantry_control_plane::server::run(config, listener, shutdown)
            .await
            .with_context(|| format!("member {name}"))
    })
}
