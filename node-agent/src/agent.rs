//! [`run`]: one node agent, from registration to shutdown. Wires the tasks together:
//! heartbeat ([`crate::node`]), replica watch ([`crate::watcher`]), reconcile loop
//! ([`crate::reconciler`]), status write-back ([`crate::status`]), events
//! ([`crate::recorder`]) and the agent's own gRPC service ([`crate::server`]).

use crate::config::AgentConfig;
use crate::reconciler::Reconciler;
use crate::watcher::{Desired, SharedDesired};
use crate::{node, recorder, server, status, watcher, AgentError};
use gantry_api::client::Client;
use gantry_api::objects::validate_name;
use gantry_runtime::container::Runtime;
use gantry_runtime::root::RuntimeRoot;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connects to the control plane, retrying with back-off until `shutdown`.
async fn connect(config: &AgentConfig, shutdown: &CancellationToken) -> Result<Client, AgentError> {
    let mut pause = Duration::from_millis(200);
    loop {
        match Client::connect(&config.servers).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "control plane unreachable; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(AgentError::Shutdown),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Runs the agent until `shutdown` is cancelled. `listener`, when given, serves the agent's
/// gRPC service (logs, exec); `config.advertise` should name it. Containers keep running
/// after return.
///
/// # Errors
/// Invalid configuration, a node claimed by another live agent, or a non-transient
/// control-plane error during registration.
pub async fn run(
    mut config: AgentConfig,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    validate_name(&config.name).map_err(|e| AgentError::Config(format!("--name: {e}")))?;
    if config.servers.is_empty() {
        return Err(AgentError::Config(
            "--server: no control-plane address given".into(),
        ));
    }
    if config.advertise.is_empty() {
        if let Some(l) = &listener {
            config.advertise = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        }
    }
    let mut runtime = Runtime::new(RuntimeRoot::new(&config.root));
    if let Some(p) = &config.shim_program {
        runtime = runtime.with_shim_program(p);
    }

    let client = connect(&config, &shutdown).await?;
    let mut reg_client = client.clone();
    node::register(&config, &mut reg_client, &shutdown).await?;

    let tracker = TaskTracker::new();
    let desired: SharedDesired = Arc::new(Mutex::new(Desired::default()));
    let wake = Arc::new(Notify::new());
    let (status_writer, status_task) =
        status::status_writer(config.name.clone(), client.clone(), shutdown.clone());
    let (recorder, recorder_task) = recorder::recorder(
        format!("agent/{}", config.name),
        client.clone(),
        shutdown.clone(),
    );
    tracker.spawn(status_task);
    tracker.spawn(recorder_task);
    tracker.spawn(node::heartbeat_loop(
        config.clone(),
        client.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(watcher::watch_replicas(
        config.name.clone(),
        client.clone(),
        desired.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let reconciler = Reconciler::new(
        config.clone(),
        runtime.clone(),
        desired.clone(),
        wake,
        status_writer,
        recorder,
    );
    tracker.spawn(reconciler.run(shutdown.clone()));
    if let Some(listener) = listener {
        tracker.spawn(server::serve(
            runtime,
            config.name.clone(),
            listener,
            shutdown.clone(),
        ));
    }
    tracing::info!(node = %config.name, root = %config.root.display(), "agent running");
    tracker.close();
    shutdown.cancelled().await;
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some agent tasks did not stop within 5s");
    }
    tracing::info!(node = %config.name, "agent stopped; containers left running");
    Ok(())
}
