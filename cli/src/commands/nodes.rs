//! `gantry cordon|uncordon|drain NODE`: mark a node (un)schedulable with a compare-and-swap
//! update of `spec.unschedulable`, and drain it by deleting every replica bound to it so the
//! service controller replaces them on other nodes.

use super::get::str_at;
use super::output::{client_error, finish, not_found, parse_duration};
use super::target::TargetArgs;
use super::wait::{wait_until, Verdict};
use clap::Args;
use gantry_api::client::{Client, ClientError};
use gantry_api::objects::Kind;
use std::time::Duration;

/// Arguments of `gantry cordon` and `gantry uncordon`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's name.
    pub node: String,
}

/// Arguments of `gantry drain`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  gantry drain n1\n  gantry drain n1 --wait --timeout 2m")]
pub struct DrainArgs {
    /// The node's name.
    pub node: String,
    /// Wait until no replica is bound to the node any more.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (`60s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `gantry cordon` (`unschedulable` true) or `gantry uncordon` (false).
pub fn run_cordon(target: &TargetArgs, args: NodeArgs, unschedulable: bool) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        let changed = set_unschedulable(&mut client, &args.node, unschedulable).await?;
        let word = if unschedulable {
            "cordoned"
        } else {
            "uncordoned"
        };
        if changed {
            println!("node/{} {word}", args.node);
        } else {
            println!("node/{} already {word}", args.node);
        }
        Ok(0)
    }))
}

/// Sets `spec.unschedulable`; `Ok(false)` when it already had that value.
async fn set_unschedulable(client: &mut Client, node: &str, value: bool) -> anyhow::Result<bool> {
    let what = format!("update node/{node}");
    for _ in 0..5 {
        let Some(mut obj) = client
            .get(Kind::Node, node)
            .await
            .map_err(|e| client_error(e, &what))?
        else {
            return Err(not_found(Kind::Node, node));
        };
        if super::get::bool_at(&obj.spec, "/unschedulable") == value {
            return Ok(false);
        }
        if obj.spec.is_null() {
            obj.spec = serde_json::json!({});
        }
        let Some(spec) = obj.spec.as_object_mut() else {
            anyhow::bail!("{what}: the stored spec is not an object");
        };
        spec.insert("unschedulable".into(), value.into());
        match client.update(&obj).await {
            Ok(_) => return Ok(true),
            Err(ClientError::Conflict(_)) => continue,
            Err(e) => return Err(client_error(e, &what)),
        }
    }
    anyhow::bail!("{what}: still conflicting after 5 attempts; try again")
}

/// Runs `gantry drain`.
pub fn run_drain(target: &TargetArgs, args: DrainArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        if set_unschedulable(&mut client, &args.node, true).await? {
            println!("node/{} cordoned", args.node);
        }
        let (replicas, _) = client
            .list(Kind::Replica)
            .await
            .map_err(|e| client_error(e, "list replicas"))?;
        for r in replicas
            .iter()
            .filter(|r| str_at(&r.spec, "/nodeName") == args.node)
        {
            let name = &r.metadata.name;
            match client.delete(Kind::Replica, name, None).await {
                Ok(_) => println!("replica/{name} evicted"),
                Err(e) => return Err(client_error(e, &format!("evict replica/{name}"))),
            }
        }
        if args.wait {
            let node = args.node.clone();
            let bound = |state: &super::wait::State| -> Vec<String> {
                state
                    .replicas
                    .values()
                    .filter(|r| str_at(&r.spec, "/nodeName") == node)
                    .map(|r| r.metadata.name.clone())
                    .collect()
            };
            wait_until(
                &mut client,
                args.timeout,
                |state| {
                    let left = bound(state);
                    if left.is_empty() {
                        Verdict::Done(Vec::new())
                    } else {
                        Verdict::Waiting(vec![format!("{node}: {} replicas left", left.len())])
                    }
                },
                |state, after| {
                    format!(
                        "node/{node}: replicas still bound after {after}: {}",
                        bound(state).join(", ")
                    )
                },
            )
            .await?;
        }
        println!("node/{} drained", args.node);
        Ok(0)
    }))
}
