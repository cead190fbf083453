//! `gantry agent`: runs one node agent until SIGTERM or SIGINT (containers keep running).

use anyhow::Context;
use clap::Args;
use gantry_api::model::{Cpu, Memory};
use gantry_api::quantity::{parse_cpu, parse_memory};
use gantry_node_agent::AgentConfig;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Lease of a heartbeat (default: 4 heartbeats).
    #[arg(long, value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// Full reconcile period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub resync: Duration,
    /// How often container state is read back.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// First restart back-off (doubles per crash).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest restart back-off.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Grace period between SIGTERM and SIGKILL when stopping containers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,
    /// Take the node over even if another agent seems to heartbeat it.
    #[arg(long)]
    pub force: bool,
}

/// Parses `300ms`, `10s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| (&t[..i], &t[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the agent; returns its exit code.
pub fn run(
    root: PathBuf,
    target: &crate::commands::target::TargetArgs,
    args: AgentArgs,
) -> anyhow::Result<i32> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
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
    config.advertise = args.advertise.clone().unwrap_or_default();
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
        gantry_node_agent::run(config, Some(listener), shutdown)
            .await
            .with_context(|| format!("agent {}", args.name))?;
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
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
