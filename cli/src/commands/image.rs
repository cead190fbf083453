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
        references: Vec<String>,
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
                        format!("{} ago", human_age(now.saturating_sub(created_secs(i)))),
                    ]);
                }
            }
            super::print_table(&["REPOSITORY", "TAG", "IMAGE ID", "SIZE", "CREATED"], &rows);
            Ok(0)
        }
        ImageCommand::Rm { references } => {
            let in_use = Runtime::new(root.clone()).list().unwrap_or_default();
            let mut failed = false;
            for reference in references {
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
        172_800..=5_183_999 => format!("{} days", secs / 86_400),
        5_184_000..=63_071_999 => format!("{} months", secs / 2_592_000),
        _ => format!("{} years", secs / 31_536_000),
    }
}

/// Unix seconds of the image's `created` (RFC 3339, UTC or with an offset), falling back to
/// the import time when absent or unparsable.
fn created_secs(image: &Image) -> u64 {
    image
        .created
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or(image.imported_at)
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    let tail = s
        .get(19..)?
        .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(off) = tail.strip_prefix(['+', '-']) {
        let oh = off.get(0..2)?.parse::<i64>().ok()?;
        let om = off.get(3..5)?.parse::<i64>().ok()?;
        let sign = if tail.starts_with('+') { 1 } else { -1 };
        secs -= sign * (oh * 3600 + om * 60);
    }
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00.123456789+01:00"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.500MB");
    }
}
