//! The agent's own Node object: registration (create, or take over one of the same name that
//! no live agent heartbeats) and the heartbeat loop.
//!
//! Invariant: the agent writes only its own Node; every write is a compare-and-swap on a
//! freshly read object, so a concurrent change by a controller (cordon, NotReady) is never
//! overwritten blindly — only the fields the agent owns are set.

use crate::config::AgentConfig;
use crate::AgentError;
use gantry_api::client::{Client, ClientError};
use gantry_api::events::{now_rfc3339_millis, now_secs, parse_rfc3339};
use gantry_api::model::{Capacity, Cpu, Memory, NodeSpec, NodeStatus};
use gantry_api::objects::{Kind, Object};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The version written to `status.agentVersion`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The machine's capacity: every CPU and all memory, unless the config overrides them.
pub fn capacity(config: &AgentConfig) -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    Capacity {
        cpu: config.cpu.unwrap_or(Cpu(cpus * 1000)),
        memory: config.memory.unwrap_or(Memory(memory)),
        replicas: 110,
    }
}

fn fill(config: &AgentConfig, node: &mut Object, ready: bool, reason: Option<&str>) {
    let mut spec: NodeSpec = node.spec_as().unwrap_or_default();
    spec.address = config.advertise.clone();
    spec.capacity = capacity(config);
    node.set_spec(&spec);
    for (k, v) in &config.labels {
        node.metadata.labels.insert(k.clone(), v.clone());
    }
    let status = NodeStatus {
        ready,
        last_heartbeat: Some(now_rfc3339_millis()),
        reason: reason.map(str::to_string),
        agent_version: AGENT_VERSION.to_string(),
    };
    node.set_status(&status);
}

fn heartbeat_of(node: &Object) -> Option<String> {
    node.status_as::<NodeStatus>()
        .ok()
        .and_then(|s| s.last_heartbeat)
}

/// Creates the Node, or takes over an existing one after checking that no live agent
/// heartbeats it (unless `config.force`). Retries transient control-plane failures until
/// `shutdown`.
///
/// # Errors
/// [`AgentError::NodeClaimed`] when another agent's heartbeat changed within the lease;
/// [`AgentError::Client`] for a non-transient failure; [`AgentError::Shutdown`].
pub async fn register(
    config: &AgentConfig,
    client: &mut Client,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let mut pause = Duration::from_millis(200);
    let mut checked = config.force;
    loop {
        match try_register(config, client, &mut checked, shutdown).await {
            Ok(()) => return Ok(()),
            Err(AgentError::Client(e))
                if e.is_transient() || matches!(e, ClientError::Conflict(_)) =>
            {
                tracing::warn!(node = %config.name, error = %e, "registration failed; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(AgentError::Shutdown),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn try_register(
    config: &AgentConfig,
    client: &mut Client,
    checked: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    match client.get(Kind::Node, &config.name).await? {
        None => {
            let mut node = Object::new(Kind::Node, &config.name);
            fill(config, &mut node, true, None);
            match client.create(&node).await {
                Ok(_) => {
                    tracing::info!(node = %config.name, address = %config.advertise, "node registered");
                    Ok(())
                }
                Err(ClientError::AlreadyExists(m)) => Err(ClientError::Conflict(m).into()),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut node) => {
            if !*checked {
                ensure_unclaimed(config, client, &node, shutdown).await?;
                *checked = true;
                node = client.get_existing(Kind::Node, &config.name).await?;
            }
            fill(config, &mut node, true, None);
            client.update(&node).await?;
            tracing::info!(node = %config.name, address = %config.advertise, "node taken over");
            Ok(())
        }
    }
}

/// Watches an existing Node's heartbeat for one lease when it is recent; fails if it changes.
async fn ensure_unclaimed(
    config: &AgentConfig,
    client: &mut Client,
    node: &Object,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let Some(first) = heartbeat_of(node) else {
        return Ok(());
    };
    let recent = parse_rfc3339(&first)
        .is_none_or(|hb| now_secs().abs_diff(hb) <= config.lease.as_secs() + 1);
    if !recent {
        return Ok(());
    }
    tracing::info!(node = %config.name, lease = ?config.lease,
        "node has a recent heartbeat; watching it for one lease before taking over");
    let deadline = Instant::now() + config.lease;
    let step = (config.lease / 8).max(Duration::from_millis(50));
    while Instant::now() < deadline {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(AgentError::Shutdown),
            _ = tokio::time::sleep(step) => {}
        }
        let now = client.get(Kind::Node, &config.name).await?;
        let hb = now.as_ref().and_then(heartbeat_of);
        if now.is_some() && hb.as_deref() != Some(first.as_str()) {
            return Err(AgentError::NodeClaimed {
                name: config.name.clone(),
                lease: config.lease,
            });
        }
    }
    Ok(())
}

/// Writes `status.ready=true` and a fresh `lastHeartbeat` every `config.heartbeat` until
/// `shutdown`; recreates the Node if it was deleted. On shutdown marks the node not ready.
pub async fn heartbeat_loop(config: AgentConfig, mut client: Client, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match beat(&config, &mut client, true, None).await {
            Ok(()) => {
                if !healthy {
                    tracing::info!(node = %config.name, "heartbeats reach the control plane again");
                }
                healthy = true;
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(node = %config.name, error = %e, "heartbeat failed");
                }
                healthy = false;
            }
        }
    }
    let last = beat(&config, &mut client, false, Some("AgentStopped"));
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), last).await {
        tracing::debug!(error = %e, "could not mark the node not ready");
    }
}

async fn beat(
    config: &AgentConfig,
    client: &mut Client,
    ready: bool,
    reason: Option<&str>,
) -> Result<(), ClientError> {
    for _ in 0..3 {
        let Some(mut node) = client.get(Kind::Node, &config.name).await? else {
            let mut node = Object::new(Kind::Node, &config.name);
            fill(config, &mut node, ready, reason);
            tracing::warn!(node = %config.name, "node object was deleted; registering again");
            match client.create(&node).await {
                Ok(_) | Err(ClientError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        };
        // Only status (and our own spec fields) change; labels others set are kept.
        fill(config, &mut node, ready, reason);
        match client.update(&node).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Conflict("node kept changing".into()))
}
