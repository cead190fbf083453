//! `gantry diff`: what `apply` would change, as a unified diff of each object's labels and
//! spec (YAML), live against applied. Exit codes as kubectl's: 0 no differences, 1 some,
//! 2 on a user-level error (invalid manifest, unknown context), 125 when Gantry failed.

use super::apply::read_manifests;
use super::output::{client_error, ref_name, UserError};
use super::target::TargetArgs;
use clap::Args;
use gantry_api::model::ServiceSpec;
use gantry_api::objects::Object;
use std::path::PathBuf;

/// Arguments of `gantry diff`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry diff -f web.yaml\n  \
    gantry diff -f manifests/ && echo up to date\n\n\
    Exit status: 0 no differences, 1 differences found, 2 invalid input, 125 Gantry failed.")]
pub struct DiffArgs {
    /// Manifest file, directory, or `-` for standard input (repeatable).
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
}

/// Runs `gantry diff`.
pub fn run(target: &TargetArgs, args: DiffArgs) -> anyhow::Result<i32> {
    match diff(target, args) {
        Err(err) if err.chain().any(|c| c.is::<UserError>()) => {
            eprintln!("gantry: {err:#}");
            Ok(2)
        }
        other => other,
    }
}

fn diff(target: &TargetArgs, args: DiffArgs) -> anyhow::Result<i32> {
    let objects = read_manifests(&args.files)?;
    super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        let mut differs = false;
        for desired in &objects {
            let name = ref_name(desired.kind, &desired.metadata.name);
            let stored = client
                .get(desired.kind, &desired.metadata.name)
                .await
                .map_err(|e| client_error(e, &format!("diff {name}")))?;
            let live = stored.as_ref().map(comparable).unwrap_or_default();
            let applied = comparable(desired);
            if live != applied {
                differs = true;
                let text = similar::TextDiff::from_lines(&live, &applied);
                print!(
                    "{}",
                    text.unified_diff()
                        .context_radius(3)
                        .header(&format!("{name} (live)"), &format!("{name} (applied)"))
                );
            }
        }
        Ok(i32::from(differs))
    })
}

/// The labels and spec of `object` as YAML, the spec in its typed (defaulted, canonical) form
/// when it parses, so that only real differences show.
pub fn comparable(object: &Object) -> String {
    let spec = match object.spec_as::<ServiceSpec>() {
        Ok(spec) => serde_json::to_value(spec).unwrap_or_else(|_| object.spec.clone()),
        Err(_) => object.spec.clone(),
    };
    let value = serde_json::json!({
        "metadata": {"labels": object.metadata.labels},
        "spec": spec,
    });
    serde_saphyr::to_string(&value).unwrap_or_default()
}
