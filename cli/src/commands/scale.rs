//! `gantry scale service NAME --replicas N`: a compare-and-swap update of `spec.replicas`
//! only, retried on conflict, so a concurrent change to any other field is kept.

use super::apply::wait_ready;
use super::output::{client_error, finish, not_found, parse_duration, parse_kind, ref_name};
use super::target::TargetArgs;
use clap::Args;
use gantry_api::client::ClientError;
use gantry_api::objects::Kind;
use std::time::Duration;

/// Arguments of `gantry scale`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry scale service web --replicas 5\n  \
    gantry scale svc web --replicas 0 --wait --timeout 30s")]
pub struct ScaleArgs {
    /// The kind: `service` (or `svc`).
    #[arg(value_parser = parse_kind, value_name = "KIND")]
    pub kind: Kind,
    /// The service's name.
    pub name: String,
    /// The desired replica count.
    #[arg(long)]
    pub replicas: u32,
    /// Wait until the service has that many replicas ready.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (`60s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `gantry scale`.
pub fn run(target: &TargetArgs, args: ScaleArgs) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        if args.kind != Kind::Service {
            return Err(super::output::user_error(format!(
                "cannot scale a {}: only services scale",
                super::output::lower(args.kind)
            )));
        }
        let mut client = target.connect().await?;
        let name = ref_name(args.kind, &args.name);
        let what = format!("scale {name}");
        let mut done = false;
        for _ in 0..5 {
            let Some(mut svc) = client
                .get(Kind::Service, &args.name)
                .await
                .map_err(|e| client_error(e, &what))?
            else {
                return Err(not_found(Kind::Service, &args.name));
            };
            let current = svc.spec.get("replicas").and_then(|v| v.as_u64());
            if current == Some(u64::from(args.replicas)) {
                done = true;
                break;
            }
            let Some(spec) = svc.spec.as_object_mut() else {
                anyhow::bail!("{what}: the stored spec is not an object");
            };
            spec.insert("replicas".into(), args.replicas.into());
            match client.update(&svc).await {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(ClientError::Conflict(_)) => continue,
                Err(e) => return Err(client_error(e, &what)),
            }
        }
        anyhow::ensure!(
            done,
            "{what}: still conflicting after 5 attempts; try again"
        );
        println!("{name} scaled");
        if args.wait {
            wait_ready(&mut client, vec![args.name.clone()], args.timeout).await?;
        }
        Ok(0)
    }))
}
