//! `gantry`: the CLI and every daemon in one binary.
//!
//! `main` is a plain function on purpose: the shim and container-init paths are dispatched
//! before any tokio runtime (or any other thread) exists, because they fork and unshare.
#![forbid(unsafe_code)]

mod commands;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Gantry: a small, fast container orchestrator.
#[derive(Parser, Debug)]
#[command(name = "gantry", version, about, propagate_version = true)]
struct Cli {
    /// Runtime root holding images and containers.
    #[arg(long, global = true, env = "GANTRY_ROOT", default_value = gantry_runtime::root::DEFAULT_ROOT)]
    root: PathBuf,

    #[command(flatten)]
    target: commands::target::TargetArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage images: import, ls, rm.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    #[command(flatten)]
    Container(commands::container::ContainerCommand),
    /// Run a control-plane member.
    Server(commands::server::ServerArgs),
    /// Control-plane membership: ls, remove.
    #[command(subcommand)]
    Members(commands::members::MembersCommand),
}

fn main() {
    if let Some(code) = gantry_runtime::shim::dispatch_hidden() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let root = gantry_runtime::root::RuntimeRoot::new(cli.root);
    let result = match cli.command {
        Command::Image(cmd) => commands::image::run(&root, cmd),
        Command::Container(cmd) => commands::container::run(&root, cmd),
        Command::Server(args) => commands::server::run(args),
        Command::Members(cmd) => commands::members::run(&cli.target, cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("gantry: {err:#}");
            std::process::exit(commands::exit_code_of(&err));
        }
    }
}
