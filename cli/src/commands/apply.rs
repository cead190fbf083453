//! `gantry apply`: read every manifest first, validate all of it (reporting every error of
//! every file, sending nothing when any is invalid), then create or update each Service with
//! compare-and-swap, and optionally wait until the services are ready.
//!
//! Invariant: nothing is written unless every given file parsed and validated; a CAS conflict
//! (someone wrote the service between our read and our update) re-reads and retries a few
//! times, comparing again, so a concurrent identical write reads as `unchanged`.

use super::output::{client_error, finish, parse_duration, ref_name, user_error, OutputFormat};
use super::target::TargetArgs;
use super::wait::{wait_until, ReadyJudge};
use anyhow::Context;
use clap::Args;
use gantry_api::client::{Client, ClientError};
use gantry_api::manifest;
use gantry_api::model::ServiceSpec;
use gantry_api::objects::Object;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many times a write that lost a compare-and-swap race is retried.
const CAS_RETRIES: usize = 5;

/// Arguments of `gantry apply`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    gantry apply -f web.yaml\n  \
    gantry apply -f manifests/ --dry-run\n  \
    cat web.yaml | gantry apply -f -\n  \
    gantry apply -f web.yaml --wait --timeout 2m\n\n\
    A directory means its *.yaml, *.yml and *.json files (sorted, not recursive).")]
pub struct ApplyArgs {
    /// Manifest file, directory, or `-` for standard input (repeatable).
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until every applied service has all its replicas ready and up to date.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (`60s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `-o name` prints only `service/NAME` per object.
    #[arg(short = 'o', long, value_enum, hide = true)]
    pub output: Option<OutputFormat>,
}

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed with another spec or labels.
    Configured,
    /// It existed as given.
    Unchanged,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Runs `gantry apply`.
pub fn run(target: &TargetArgs, args: ApplyArgs) -> anyhow::Result<i32> {
    finish(apply(target, args))
}

fn apply(target: &TargetArgs, args: ApplyArgs) -> anyhow::Result<i32> {
    let objects = read_manifests(&args.files)?;
    super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        let suffix = if args.dry_run { " (dry run)" } else { "" };
        for desired in &objects {
            let outcome = apply_one(&mut client, desired, args.dry_run).await?;
            let name = ref_name(desired.kind, &desired.metadata.name);
            if args.output == Some(OutputFormat::Name) {
                println!("{name}");
            } else {
                println!("{name} {}{suffix}", outcome.word());
            }
        }
        if args.wait && !args.dry_run {
            let names = objects.iter().map(|o| o.metadata.name.clone()).collect();
            wait_ready(&mut client, names, args.timeout).await?;
        }
        Ok(0)
    })
}

/// Waits until every service in `names` is ready (see [`ReadyJudge`]).
///
/// # Errors
/// A [`super::output::UserError`] naming the services and reasons at the timeout.
pub async fn wait_ready(
    client: &mut Client,
    names: Vec<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let judge = std::cell::RefCell::new(ReadyJudge::new(names));
    wait_until(
        client,
        timeout,
        |state| judge.borrow_mut().judge(state),
        |state, after| judge.borrow().timed_out(state, after),
    )
    .await
}

/// Creates `desired` when absent, else updates its spec and labels when they differ
/// (compare-and-swap, retried on conflict). With `dry_run`, only reads.
///
/// # Errors
/// The server refuses the write, or the conflict persists.
pub async fn apply_one(
    client: &mut Client,
    desired: &Object,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let (kind, name) = (desired.kind, desired.metadata.name.as_str());
    let what = format!("apply {}", ref_name(kind, name));
    for _ in 0..CAS_RETRIES {
        match client
            .get(kind, name)
            .await
            .map_err(|e| client_error(e, &what))?
        {
            None => {
                if dry_run {
                    return Ok(Outcome::Created);
                }
                match client.create(desired).await {
                    Ok(_) => return Ok(Outcome::Created),
                    Err(ClientError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(client_error(e, &what)),
                }
            }
            Some(stored) => {
                if same_spec_and_labels(&stored, desired) {
                    return Ok(Outcome::Unchanged);
                }
                if dry_run {
                    return Ok(Outcome::Configured);
                }
                let mut next = stored.clone();
                next.spec = desired.spec.clone();
                next.metadata.labels = desired.metadata.labels.clone();
                match client.update(&next).await {
                    Ok(_) => return Ok(Outcome::Configured),
                    Err(ClientError::Conflict(_) | ClientError::NotFound(_)) => continue,
                    Err(e) => return Err(client_error(e, &what)),
                }
            }
        }
    }
    anyhow::bail!("{what}: still conflicting after {CAS_RETRIES} attempts; try again")
}

/// Whether the stored object already has the desired spec and labels (specs compared in their
/// typed, defaulted form when both parse, so `replicas: 1` equals an omitted `replicas`).
pub fn same_spec_and_labels(stored: &Object, desired: &Object) -> bool {
    if stored.metadata.labels != desired.metadata.labels {
        return false;
    }
    match (
        stored.spec_as::<ServiceSpec>(),
        desired.spec_as::<ServiceSpec>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => stored.spec == desired.spec,
    }
}

/// Reads, parses and validates every manifest in `files` (directories expand to their
/// `*.yaml`, `*.yml` and `*.json`, sorted). Prints every error, one per line, and fails when
/// there is any or when no object is found.
///
/// # Errors
/// A [`super::output::UserError`] when a file cannot be read or any manifest is invalid.
pub fn read_manifests(files: &[PathBuf]) -> anyhow::Result<Vec<Object>> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for path in files {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .take(manifest::MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            sources.push(("-".to_string(), text));
        } else if path.is_dir() {
            for file in manifest_files(path)? {
                sources.push((file.display().to_string(), read_file(&file)?));
            }
        } else {
            sources.push((path.display().to_string(), read_file(path)?));
        }
    }
    let mut errors = Vec::new();
    let mut objects: Vec<(String, Object)> = Vec::new();
    for (source, text) in &sources {
        match manifest::parse(source, text) {
            Ok(objs) => objects.extend(objs.into_iter().map(|o| (source.clone(), o))),
            Err(e) => errors.extend(e.0),
        }
    }
    errors.extend(manifest::check_unique(&objects));
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        let n = errors.len();
        return Err(user_error(format!(
            "{n} error{} in the manifests; nothing was sent",
            if n == 1 { "" } else { "s" }
        )));
    }
    if objects.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(user_error(format!(
            "no objects found in {}",
            names.join(", ")
        )));
    }
    Ok(objects.into_iter().map(|(_, o)| o).collect())
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| user_error(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > manifest::MAX_MANIFEST_BYTES as u64 {
        return Err(user_error(format!(
            "{}: {} bytes exceeds the manifest limit of {} bytes",
            path.display(),
            meta.len(),
            manifest::MAX_MANIFEST_BYTES
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("cannot read {}: {e}", path.display())))
}

/// The manifest files directly in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| user_error(format!("cannot read {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(user_error(format!(
            "{}: no *.yaml, *.yml or *.json files",
            dir.display()
        )));
    }
    Ok(files)
}
