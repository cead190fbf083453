//! `gantry logs REPLICA`: a replica's output, as kubectl prints a pod's, read through the
//! agent of the node it is bound to. Also the lookup shared with `gantry exec`: replica →
//! node → the agent's advertised address.

use super::output::{client_error, finish, not_found, user_error};
use super::target::TargetArgs;
use clap::Args;
use gantry_api::model::{NodeSpec, ReplicaSpec, ReplicaStatus};
use gantry_api::objects::Kind;
use gantry_api::proto::LogsRequest;
use gantry_node_agent::client::{AgentCallError, AgentClient};
use std::io::Write;

/// Arguments of `gantry logs`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry logs web-7f9c2\n  \
    gantry logs -f --tail 10 web-7f9c2\n  \
    gantry logs --previous web-7f9c2\n\n\
    Local containers: gantry container logs CONTAINER")]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, value_name = "N", default_value_t = -1, allow_hyphen_values = true)]
    pub tail: i64,
    /// The container before the last restart.
    #[arg(short, long)]
    pub previous: bool,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short, long)]
    pub timestamps: bool,
    /// The replica's name.
    pub replica: String,
}

/// A replica's agent, connected, with what the control plane says about the replica.
pub struct ReplicaAgent {
    /// The connection to the agent.
    pub client: AgentClient,
    /// The replica's status as stored.
    pub status: ReplicaStatus,
}

/// Looks up `replica`, its node and the node's address, and connects to the agent there.
///
/// # Errors
/// A [`super::output::UserError`] when the replica does not exist, is not scheduled, its
/// node is unknown or has no address, or the agent cannot be reached.
pub async fn connect_replica_agent(
    target: &TargetArgs,
    replica: &str,
) -> anyhow::Result<ReplicaAgent> {
    let mut client = target.connect().await?;
    let what = format!("replica {replica:?}");
    let Some(obj) = client
        .get(Kind::Replica, replica)
        .await
        .map_err(|e| client_error(e, &what))?
    else {
        return Err(not_found(Kind::Replica, replica));
    };
    let spec: ReplicaSpec = obj
        .spec_as()
        .map_err(|e| anyhow::anyhow!("{what}: invalid stored spec: {e}"))?;
    let status: ReplicaStatus = obj.status_as().unwrap_or_default();
    let Some(node) = spec.node_name.filter(|n| !n.is_empty()) else {
        return Err(user_error(format!(
            "replica {replica:?} is not scheduled to a node yet"
        )));
    };
    let Some(node_obj) = client
        .get(Kind::Node, &node)
        .await
        .map_err(|e| client_error(e, &format!("node {node:?}")))?
    else {
        return Err(user_error(format!(
            "replica {replica:?} is bound to node {node:?}, which does not exist"
        )));
    };
    let address = node_obj
        .spec_as::<NodeSpec>()
        .map(|s| s.address)
        .unwrap_or_default();
    if address.is_empty() {
        return Err(user_error(format!(
            "node {node:?} has no agent address (is its agent running?)"
        )));
    }
    let client = AgentClient::connect(&address).await.map_err(|e| {
        user_error(format!(
            "cannot reach the agent of node {node:?} at {address}: {e}"
        ))
    })?;
    Ok(ReplicaAgent { client, status })
}

/// Maps an agent's refusal to a user-level error (exit 1).
pub fn agent_error(err: AgentCallError) -> anyhow::Error {
    user_error(err.to_string())
}

/// Runs `gantry logs`.
pub fn run(target: &TargetArgs, args: LogsArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut agent = connect_replica_agent(target, &args.replica).await?;
        let mut stream = agent
            .client
            .logs(LogsRequest {
                replica: args.replica.clone(),
                follow: args.follow,
                tail: args.tail,
                previous: args.previous,
                timestamps: args.timestamps,
            })
            .await
            .map_err(agent_error)?;
        while let Some(chunk) = stream.next().await.map_err(agent_error)? {
            let written = if chunk.stream == "stderr" {
                let mut err = std::io::stderr().lock();
                err.write_all(&chunk.data).and_then(|()| err.flush())
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&chunk.data).and_then(|()| out.flush())
            };
            // The reader went away (`gantry logs … | head`): stop quietly.
            if written.is_err() {
                return Ok(0);
            }
        }
        Ok(0)
    }))
}
