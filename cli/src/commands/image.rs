//! `gantry image import|ls|rm`.

use anyhow::Context;
use clap::Subcommand;
use gantry_runtime::container::Runtime;
use gantry_runtime::images::{Image, ImageStore};
use gantry_runtime::root::RuntimeRoot;
use std::path::PathBuf;

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout archive, a `docker save` archive, or a rootfs tarball.
    Import {
        /// The archive (plain or gzip-compressed tar).
        file: PathBuf,
        /// Name the image NAME[:TAG] (in addition to names in the archive).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (refused while a container uses them).
    Rm {
        /// Image references: name[:tag], id or id prefix.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// Runs an image subcommand; returns the process exit code.
pub fn run(root: &RuntimeRoot, cmd: ImageCommand) -> anyhow::Result<i32> {
    let store = ImageStore::open(&root.images_dir()).with_context(|| {
        format!(
            "cannot open the image store under {}",
            root.path().display()
        )
    })?;
    match cmd {
        ImageCommand::Import { file, name } => {
            let image = store
                .import(&file, name.as_deref())
                .with_context(|| format!("cannot import {}", file.display()))?;
            let label = image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| "<none>".into());
            println!("imported {label} ({})", short_id(&image));
            Ok(0)
        }
        ImageCommand::Ls { quiet } => {
            let images = store.list()?;
            if quiet {
                for i in &images {
                    println!("{}", short_id(i));
                }
                return Ok(0);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut rows = Vec::new();
            for i in &images {
                let names: Vec<(String, String)> = if i.names.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    i.names
                        .iter()
                        .map(|n| {
                            let (r, t) = n.rsplit_once(':').unwrap_or((n, "latest"));
                            (r.to_string(), t.to_string())
                        })
                        .collect()
                };
                for (repo, tag) in names {
                    rows.push(vec![
                        repo,
                        tag,
                        short_id(i),
                        human_size(i.size),
                        format!("{} ago", human_age(now.saturating_sub(i.imported_at))),
                    ]);
                }
            }
            super::print_table(
                &["REPOSITORY", "TAG", "IMAGE ID", "SIZE", "IMPORTED"],
                &rows,
            );
            Ok(0)
        }
        ImageCommand::Rm { images } => {
            let in_use = Runtime::new(root.clone()).list().unwrap_or_default();
            let mut failed = false;
            for reference in images {
                let result = store
                    .resolve(&reference)
                    .map_err(anyhow::Error::from)
                    .and_then(|img| {
                        if let Some(c) = in_use.iter().find(|c| c.spec.image_id == img.id) {
                            anyhow::bail!(
                                "image {reference} is used by container {} ({}): remove it first",
                                &c.spec.id[..12],
                                c.spec.name
                            );
                        }
                        Ok(store.remove(&img.id)?)
                    });
                match result {
                    Ok(img) => println!("deleted {}", img.id),
                    Err(e) => {
                        eprintln!("gantry: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
    }
}

fn short_id(image: &Image) -> String {
    image
        .id
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", UNITS[u]).replace(".000", "")
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} seconds"),
        60..=3599 => format!("{} minutes", secs / 60),
        3600..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}
