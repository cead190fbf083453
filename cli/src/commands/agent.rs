//! `gantry agent`: runs one node agent until SIGTERM or SIGINT (containers keep running).

use super::output::parse_positive_duration;
use anyhow::Context;
use clap::Args;
use gantry_api::model::{Cpu, Memory};
use gantry_api::quantity::{parse_cpu, parse_memory};
use gantry_node_agent::{AgentConfig, NetworkMode};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `gantry agent` (the control plane comes from the global `--server`).
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's name (a DNS-1123 label), unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// Address to serve logs and exec on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Address the control plane and the CLI reach this agent at (default: the listening one).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Node labels, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// CPU offered to replicas (default: every CPU of the machine), e.g. 2 or 1500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory offered to replicas (default: the machine's), e.g. 4Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Heartbeat period, e.g. 1s or 200ms.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,
    /// Lease of a heartbeat (default: 4 heartbeats).
    #[arg(long, value_parser = parse_positive_duration)]
    pub lease: Option<Duration>,
    /// Full reconcile period.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub resync: Duration,
    /// How often container state is read back.
    #[arg(long, default_value = "500ms", value_parser = parse_positive_duration)]
    pub poll: Duration,
    /// First restart back-off (doubles per crash).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub backoff_base: Duration,
    /// Longest restart back-off.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    pub backoff_max: Duration,
    /// Grace period between SIGTERM and SIGKILL when stopping containers.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub stop_grace: Duration,
    /// Take the node over even if another agent seems to heartbeat it.
    #[arg(long)]
    pub force: bool,
    /// Replica networking: `bridge` (an address per replica on a node bridge, routes to other
    /// nodes) or `none` (each container gets only `lo`; for agents sharing the host's network
    /// namespace).
    #[arg(long, default_value = "bridge", value_parser = ["bridge", "none"])]
    pub network: String,
    /// The node bridge replicas attach to (with `--network bridge`).
    #[arg(long, default_value = "gantry0")]
    pub bridge: String,
}

/// Runs the agent; returns its exit code.
pub fn run(
    root: PathBuf,
    target: &crate::commands::target::TargetArgs,
    args: AgentArgs,
) -> anyhow::Result<i32> {
    super::daemon::init_logging("info");
    let mut config = AgentConfig::new(args.name.clone(), target.servers()?, root);
    for kv in &args.labels {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--label {kv:?}: expected KEY=VALUE"))?;
        config.labels.insert(k.to_string(), v.to_string());
    }
    if let Some(c) = &args.cpu {
        config.cpu = Some(Cpu(parse_cpu(c).with_context(|| format!("--cpu {c:?}"))?));
    }
    if let Some(m) = &args.memory {
        config.memory = Some(Memory(
            parse_memory(m).with_context(|| format!("--memory {m:?}"))?,
        ));
    }
    config.heartbeat = args.heartbeat;
    config.lease = args.lease.unwrap_or(args.heartbeat * 4);
    config.resync = args.resync;
    config.poll = args.poll;
    config.backoff_base = args.backoff_base;
    config.backoff_max = args.backoff_max.max(args.backoff_base);
    config.stop_grace = args.stop_grace;
    config.force = args.force;
    config.network = match args.network.as_str() {
        "none" => NetworkMode::None,
        _ => NetworkMode::Bridge,
    };
    config.bridge = args.bridge.clone();
    config.advertise = args.advertise.clone().unwrap_or_default();
    let name = args.name.clone();
    super::daemon::serve(
        &args.listen,
        super::daemon::Threads::Default,
        |listener, shutdown| async move {
            gantry_node_agent::run(config, Some(listener), shutdown)
                .await
                .with_context(|| format!("agent {name}"))
        },
    )
}
