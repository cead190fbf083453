//! `gantry server`: runs one control-plane member until SIGTERM or SIGINT.

use super::output::parse_positive_duration;
use anyhow::Context;
use clap::Args;
use gantry_control_plane::controllers::{default_controllers, ControllerConfig};
use gantry_control_plane::raft::RaftTuning;
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
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout in milliseconds.
    #[arg(long, default_value_t = 400)]
    pub election_min_ms: u64,
    /// Upper bound of the election timeout in milliseconds.
    #[arg(long, default_value_t = 800)]
    pub election_max_ms: u64,
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
}

/// Runs the member; returns its exit code.
pub fn run(args: ServerArgs) -> anyhow::Result<i32> {
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
    config.leader_tasks = default_controllers(ControllerConfig {
        node_lease: args.node_lease,
        node_grace: args.node_grace,
        resync: args.resync,
        ..ControllerConfig::default()
    });
    let name = args.name.clone();
    super::daemon::serve(&args.listen, |listener, shutdown| async move {
        gantry_control_plane::server::run(config, listener, shutdown)
            .await
            .with_context(|| format!("member {name}"))
    })
}
