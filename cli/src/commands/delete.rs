//! `gantry delete`: by manifest (`-f`) or by kind and names; `--wait` waits until the deleted
//! services' replicas are gone too (the service controller removes them).

use super::apply::read_manifests;
use super::output::{
    client_error, finish, lower, parse_duration, parse_kind, user_error, UserError,
};
use super::target::TargetArgs;
use super::wait::{wait_until, Verdict};
use clap::Args;
use gantry_api::objects::Kind;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `gantry delete`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry delete service web api\n  \
    gantry delete -f web.yaml --wait\n  \
    gantry delete svc old --ignore-not-found")]
pub struct DeleteArgs {
    /// Delete the objects of these manifests (file, directory or `-`).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        conflicts_with = "kind"
    )]
    pub files: Vec<PathBuf>,
    /// The kind (`service`, `replica`, `node`, `event`, or their short names).
    #[arg(value_parser = parse_kind, value_name = "KIND", required_unless_present = "files")]
    pub kind: Option<Kind>,
    /// The names.
    #[arg(value_name = "NAME", requires = "kind")]
    pub names: Vec<String>,
    /// An object that does not exist is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Wait until the deleted services' replicas are gone.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (`60s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `gantry delete`.
pub fn run(target: &TargetArgs, args: DeleteArgs) -> anyhow::Result<i32> {
    finish(delete(target, args))
}

fn delete(target: &TargetArgs, args: DeleteArgs) -> anyhow::Result<i32> {
    let targets: Vec<(Kind, String)> = if args.files.is_empty() {
        let kind = args
            .kind
            .ok_or_else(|| user_error("give KIND NAME… or -f FILE"))?;
        if args.names.is_empty() {
            return Err(user_error(format!("delete {}: no name given", lower(kind))));
        }
        args.names.iter().map(|n| (kind, n.clone())).collect()
    } else {
        read_manifests(&args.files)?
            .into_iter()
            .map(|o| (o.kind, o.metadata.name))
            .collect()
    };
    super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        let mut missing = Vec::new();
        let mut deleted_services = Vec::new();
        for (kind, name) in &targets {
            let what = format!("delete {} {name:?}", lower(*kind));
            match client
                .delete(*kind, name, None)
                .await
                .map_err(|e| client_error(e, &what))?
            {
                Some(_) => {
                    println!("{} {name:?} deleted", lower(*kind));
                    if *kind == Kind::Service {
                        deleted_services.push(name.clone());
                    }
                }
                None if args.ignore_not_found => {}
                None => missing.push(format!("{} {name:?} not found", lower(*kind))),
            }
        }
        if args.wait && !deleted_services.is_empty() {
            let names = deleted_services.clone();
            wait_until(
                &mut client,
                args.timeout,
                |state| {
                    let lines: Vec<String> = names
                        .iter()
                        .map(|n| (n, state.replicas_of(n).len()))
                        .filter(|(_, left)| *left > 0)
                        .map(|(n, left)| format!("{n}: {left} replicas left"))
                        .collect();
                    if lines.is_empty() {
                        Verdict::Done(Vec::new())
                    } else {
                        Verdict::Waiting(lines)
                    }
                },
                |state, after| {
                    let left: Vec<String> = names
                        .iter()
                        .map(|n| (n, state.replicas_of(n)))
                        .filter(|(_, r)| !r.is_empty())
                        .map(|(n, r)| {
                            let names: Vec<&str> =
                                r.iter().map(|o| o.metadata.name.as_str()).collect();
                            format!(
                                "{n}: replicas still there after {after}: {}",
                                names.join(", ")
                            )
                        })
                        .collect();
                    left.join("; ")
                },
            )
            .await?;
        }
        if missing.is_empty() {
            Ok(0)
        } else {
            Err(anyhow::Error::new(UserError(missing.join("; "))))
        }
    })
}
