//! [`run`]: one node agent, from registration to shutdown. Wires the tasks together:
//! heartbeat ([`crate::node`]), replica watch ([`crate::watcher`]), reconcile loop
//! ([`crate::reconciler`]), status write-back ([`crate::status`]), events
//! ([`crate::recorder`]), replica networking ([`crate::network`]) and the agent's own gRPC
//! service ([`crate::server`]).

use crate::config::{AgentConfig, NetworkMode};
use crate::network::node_network::NodeNetworkConfig;
use crate::network::{NetworkWatch, Sandboxes};
use crate::reconciler::{Reconciler, ReplicaNetworking};
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

    let sandboxes = match config.network {
        NetworkMode::Bridge => {
            crate::network::validate_bridge_name(&config.bridge)
                .map_err(|e| AgentError::Config(format!("--bridge: {e}")))?;
            let root = config.root.clone();
            let opened = tokio::task::spawn_blocking(move || Sandboxes::open(&root))
                .await
                .map_err(|e| AgentError::Config(e.to_string()))?;
            Some(opened.map_err(|e| AgentError::Config(format!("replica networking: {e}")))?)
        }
        NetworkMode::None => None,
    };

    let client = connect(&config, &shutdown).await?;
    let mut reg_client = client.clone();
    node::register(&config, &mut reg_client, &shutdown).await?;

    let tracker = TaskTracker::new();
    let mut replica_networking: Option<ReplicaNetworking> = None;
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
    // Replica networking: the node network (bridge, routes) and the replicas' sandboxes.
    let network: Option<NetworkWatch> = sandboxes
        .map(|sandboxes| {
            let (tx, rx) = tokio::sync::watch::channel(None);
            tracker.spawn(crate::network::watch_node_network(
                NodeNetworkConfig {
                    node: config.name.clone(),
                    bridge: config.bridge.clone(),
                    advertise: config.advertise.clone(),
                    resync: config.resync,
                },
                client.clone(),
                tx,
                shutdown.clone(),
            ));
            // A new node network (set up, or its subnet changed) wakes the reconciler at once.
            let (mut changes, wake) = (rx.clone(), wake.clone());
            let stop = shutdown.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = changes.changed() => if r.is_err() { return },
                    }
                    wake.notify_one();
                }
            });
            (rx, sandboxes)
        })
        .map(|(rx, sandboxes)| {
            replica_networking = Some(ReplicaNetworking {
                node: rx.clone(),
                sandboxes,
            });
            rx
        });

    // Service addresses, node ports and DNS, once the node network is up.
    if let Some(network) = &network {
        tracker.spawn(run_proxy(network.clone(), client.clone(), shutdown.clone()));
    }

    let mut reconciler = Reconciler::new(
        config.clone(),
        runtime.clone(),
        desired.clone(),
        wake,
        status_writer,
        recorder,
    );
    if let Some(n) = replica_networking {
        reconciler = reconciler.with_network(n);
    }
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

/// Runs the service proxy and DNS server ([`crate::proxy`]) for the current node network,
/// restarting them when it changes (a new subnet or bridge) and retrying with back-off when
/// they cannot start (nft missing, the DNS address not bindable): replicas keep running
/// meanwhile, only service addresses and names wait.
async fn run_proxy(mut network: NetworkWatch, client: Client, shutdown: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    loop {
        let current = network.borrow_and_update().clone();
        let Some(net) = current else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = network.changed() => if r.is_err() { return },
            }
            continue;
        };
        let stop = shutdown.child_token();
        let config = crate::proxy::ProxyConfig::new(net.bridge.clone(), net.subnet, net.gateway);
        let proxy = crate::proxy::run(config, client.clone(), stop.clone());
        tokio::pin!(proxy);
        let outcome = tokio::select! {
            r = &mut proxy => Some(r),
            r = network.changed() => {
                stop.cancel();
                let _ = proxy.await;
                if r.is_err() { return }
                None
            }
        };
        match outcome {
            Some(Ok(())) => return,
            Some(Err(e)) => {
                tracing::error!(error = %e, retry_in = ?pause, "service proxy cannot start; service addresses and names are not served");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            None => pause = Duration::from_secs(1),
        }
    }
}
