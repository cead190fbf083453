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
    Local(commands::container::TopLevelContainerCommand),
    /// Local containers: run, ps, logs, stop, rm, inspect.
    #[command(subcommand)]
    Container(commands::container::ContainerCommand),
    /// Print a replica's output (through the agent of its node).
    Logs(commands::logs::LogsArgs),
    /// Run a command in a replica's running container.
    Exec(commands::exec::ExecArgs),
    /// Run a control-plane member.
    Server(commands::server::ServerArgs),
    /// Run a node agent: register this machine and run the replicas bound to it.
    Agent(commands::agent::AgentArgs),
    /// A local multi-node cluster: up, status, down, import, stop/start/kill, partition/heal.
    Cluster(commands::cluster::ClusterArgs),
    /// Control-plane membership: ls, remove.
    #[command(subcommand)]
    Members(commands::members::MembersCommand),
    /// Show the CLI's contexts (which cluster to talk to) and switch between them.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// List services, replicas, nodes, members or events.
    Get(commands::get::GetArgs),
    /// Create or update services from manifest files.
    Apply(commands::apply::ApplyArgs),
    /// Show what `apply` would change (exit 1 when something would).
    Diff(commands::diff::DiffArgs),
    /// Show one service, replica or node in detail, with its events.
    Describe(commands::describe::DescribeArgs),
    /// Set the replica count of a service.
    Scale(commands::scale::ScaleArgs),
    /// Delete services (by name or manifest), replicas, nodes or events.
    Delete(commands::delete::DeleteArgs),
    /// Mark a node unschedulable: no new replicas go there.
    #[command(after_help = "Example:\n  gantry cordon n1")]
    Cordon(commands::nodes::NodeArgs),
    /// Mark a node schedulable again.
    #[command(after_help = "Example:\n  gantry uncordon n1")]
    Uncordon(commands::nodes::NodeArgs),
    /// Cordon a node and evict its replicas so they are replaced elsewhere.
    Drain(commands::nodes::DrainArgs),
    /// List events, oldest first (`-w` to follow).
    Events(commands::events::EventsArgs),
    /// Print a shell completion script.
    Completion(commands::completion::CompletionArgs),
}

fn main() {
    if let Some(code) = gantry_runtime::shim::dispatch_hidden() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let root = gantry_runtime::root::RuntimeRoot::new(cli.root);
    let result = match cli.command {
        Command::Image(cmd) => commands::image::run(&root, cmd),
        Command::Local(cmd) => commands::container::run(&root, cmd),
        Command::Container(cmd) => commands::container::run(&root, cmd),
        Command::Logs(args) => commands::logs::run(&cli.target, args),
        Command::Exec(args) => commands::exec::run(&cli.target, args),
        Command::Server(args) => commands::server::run(args),
        Command::Agent(args) => commands::agent::run(root.path().to_path_buf(), &cli.target, args),
        Command::Cluster(args) => commands::cluster::run(args),
        Command::Members(cmd) => commands::members::run(&cli.target, cmd),
        Command::Config(cmd) => commands::config::run(&cli.target, cmd),
        Command::Get(args) => commands::get::run(&cli.target, args),
        Command::Apply(args) => commands::apply::run(&cli.target, args),
        Command::Diff(args) => commands::diff::run(&cli.target, args),
        Command::Describe(args) => commands::describe::run(&cli.target, args),
        Command::Scale(args) => commands::scale::run(&cli.target, args),
        Command::Delete(args) => commands::delete::run(&cli.target, args),
        Command::Cordon(args) => commands::nodes::run_cordon(&cli.target, args, true),
        Command::Uncordon(args) => commands::nodes::run_cordon(&cli.target, args, false),
        Command::Drain(args) => commands::nodes::run_drain(&cli.target, args),
        Command::Events(args) => commands::events::run(&cli.target, args),
        Command::Completion(args) => {
            commands::completion::run(args, <Cli as clap::CommandFactory>::command())
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("gantry: {err:#}");
            std::process::exit(commands::exit_code_of(&err));
        }
    }
}
