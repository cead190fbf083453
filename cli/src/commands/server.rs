//! `gantry server`: runs one control-plane member until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Args;
use gantry_control_plane::controllers::{default_controllers, ControllerConfig};
use gantry_control_plane::raft::RaftTuning;
use gantry_control_plane::server::{Bootstrap, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub node_lease: Duration,
    /// After a further grace, a NotReady node's replicas are replaced elsewhere.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub node_grace: Duration,
    /// Controllers compare all desired and actual state at least this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub resync: Duration,
}

/// Parses `250ms`, `4s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 4s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

/// Runs the member; returns its exit code.
pub fn run(args: ServerArgs) -> anyhow::Result<i32> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
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
    // Built here, after the shim/init dispatch in `main`: daemons own their runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        gantry_control_plane::server::run(config, listener, shutdown)
            .await
            .with_context(|| format!("member {}", args.name))?;
        Ok(0)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the member");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
