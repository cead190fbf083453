//! `gantry run|ps|logs|stop|rm`.

use clap::Subcommand;
use gantry_runtime::root::RuntimeRoot;

/// Container subcommands, flattened into the top level as Docker has them.
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers.
    Ps,
}

/// Runs a container subcommand; returns the process exit code.
pub fn run(_root: &RuntimeRoot, _cmd: ContainerCommand) -> anyhow::Result<i32> {
    anyhow::bail!("container commands are not built yet")
}
