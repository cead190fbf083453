//! `gantry-e2e`: long-running end-to-end checks of a real local cluster.
//!
//! `gantry-e2e linearizability --seed N --duration 30s` runs [`gantry_e2e::nemesis::run`] and
//! exits 0 when the run is clean, 1 otherwise.
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gantry_e2e::nemesis::{self, RunConfig};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gantry-e2e",
    about = "End-to-end checks of a local Gantry cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Random reads, writes and CASes under a seeded nemesis, checked for linearizability.
    Linearizability {
        /// Seeds the fault schedule and the clients' choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long to run faults and clients (`500ms`, `30s`, `2m`).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Registers.
        #[arg(long, default_value_t = 5)]
        keys: usize,
        /// Control-plane members (at least 3, so one member down keeps a quorum).
        #[arg(long, default_value_t = 3)]
        servers: u8,
    },
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("duration {s:?}: missing unit (ms, s, m)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("duration {s:?}: bad number"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("duration {s:?}: unit must be ms, s or m"),
    })
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The `gantry` binary sits next to this one in the target directory.
    if std::env::var_os("GANTRY_BIN").is_none() {
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("gantry")));
        if let Some(bin) = sibling.filter(|b| b.exists()) {
            std::env::set_var("GANTRY_BIN", bin);
        }
    }
    match cli.command {
        Command::Linearizability {
            seed,
            duration,
            clients,
            keys,
            servers,
        } => {
            if servers < 3 {
                bail!("--servers {servers}: at least 3 are needed to keep a quorum under faults");
            }
            let config = RunConfig {
                seed,
                duration,
                clients,
                keys,
                servers,
            };
            let report = nemesis::run(&config).context("linearizability run")?;
            println!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
